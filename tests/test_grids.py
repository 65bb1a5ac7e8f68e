"""4-bit grids that decode exactly into int8 (offline.grids, onboard.artifact.layer_int8),
the Hessian-weighted clipping search and the closed-form bias correction."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from gplq_ros.offline.calibration import batches_of, init_quantizers
from gplq_ros.offline.data import make_crops
from gplq_ros.offline.fakequant import export_tensors, fakequant_model
from gplq_ros.offline.quantized import QuantDinoV2
from gplq_ros.offline.spec import QuantSpec
from gplq_ros.offline.weight_ptq import correct_biases, hessian_error, quantize_layer, search_layer, stage2
from gplq_ros.onboard.artifact import ArtifactError, layer_int8, load_artifact, save_artifact
from gplq_ros.onboard.packing import pack_int4, pack_uint4


def layer_problem(seed=0, out_f=48, in_f=128):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * torch.linspace(0.2, 2.0, in_f)   # uneven input columns
    w[3, 7] = 9.0                                                                 # one outlier row
    x = torch.randn(512, in_f, generator=g) @ (torch.eye(in_f) + 0.3 * torch.randn(in_f, in_f, generator=g))
    x[:, :16] *= 5                                                                # some inputs matter more
    return w, (x.T @ x).double()


def as_tensors(name, codes, scales, grid):
    t = {f'w/{name}.int4': pack_int4(codes.numpy()), f'w/{name}.scales': scales.numpy()}
    info = {'bits': 4, 'group_size': None, 'shape': list(codes.shape), 'grid': grid.kind}
    if grid.kind == 'multiplier':
        t[f'w/{name}.mult'] = pack_uint4(grid.mult.numpy())
        info['grid_group'] = grid.group
    else:
        t[f'w/{name}.codebook'] = grid.levels.numpy().astype(np.int8)
    return t, info


@pytest.mark.parametrize('kind', ['multiplier', 'codebook'])
@pytest.mark.parametrize('act_order', [False, True])
def test_grids_decode_exactly_into_int8_and_beat_the_uniform_grid(kind, act_order):
    w, h = layer_problem()
    spec = QuantSpec(weight_grid=kind, grid_group=16, act_order=act_order)
    codes, scales, grid, err, _ = search_layer(w, h, 4, spec)
    assert codes.dtype == torch.int8 and codes.min() >= -8 and codes.max() <= 7 and scales.shape == (48, 1)
    ints = grid.int8_values(codes)
    assert torch.equal(ints, ints.round()) and ints.min() >= -128 and ints.max() <= 127
    if kind == 'multiplier':
        assert grid.mult.min() >= 1 and grid.mult.max() <= 15 and ints.min() >= -120 and ints.max() <= 105
    else:
        assert bool((grid.levels.diff(dim=1) >= 0).all())
    tensors, info = as_tensors('blocks.0.mlp.fc1', codes, scales, grid)
    decoded = layer_int8(tensors, 'blocks.0.mlp.fc1', info)          # the onboard (numpy) decoding
    assert decoded.dtype == np.int8 and np.array_equal(decoded, ints.numpy().astype(np.int8))
    values = ints * scales
    # err is float64; ints * scales here rounds wq by 2^-24, ~1e-6 of the much smaller wq - w
    torch.testing.assert_close(hessian_error(w, values, h), err, rtol=1e-5, atol=0)
    # the same search on the uniform grid (one step per channel) leaves more output error
    _, _, _, err_uniform, _ = search_layer(w, h, 4, replace(spec, weight_grid='uniform', weight_clip='hessian'))
    assert float(err.sum()) < 0.9 * float(err_uniform.sum())


def test_grid_tensors_that_do_not_fit_their_layer_are_refused():
    w, h = layer_problem()
    name = 'blocks.2.attn.qkv'
    codes, scales, grid, _, _ = search_layer(w, h, 4, QuantSpec(weight_grid='multiplier', grid_group=16))
    tensors, info = as_tensors(name, codes, scales, grid)
    bad = dict(tensors)
    bad[f'w/{name}.mult'] = np.zeros_like(tensors[f'w/{name}.mult'])       # k = 0 is not in [1, 15]
    with pytest.raises(ArtifactError, match=r'blocks.2.attn.qkv: w/blocks.2.attn.qkv.mult holds multipliers in \[0'):
        layer_int8(bad, name, info)
    bad[f'w/{name}.mult'] = tensors[f'w/{name}.mult'][:-1]                  # one group short
    with pytest.raises(ArtifactError, match='must hold 384 packed 4-bit multipliers'):
        layer_int8(bad, name, info)
    with pytest.raises(ArtifactError, match='grid_group=24 does not divide the 128 input channels'):
        layer_int8(tensors, name, dict(info, grid_group=24))
    with pytest.raises(ArtifactError, match="grid='multiplier' needs 4-bit codes"):
        layer_int8(tensors, name, dict(info, bits=8))
    wide = dict(tensors, **{f'w/{name}.scales': np.ones((48, 8), np.float32)})
    with pytest.raises(ArtifactError, match='needs one scale per output channel'):
        layer_int8(wide, name, info)
    codes, scales, grid, _, _ = search_layer(w, h, 4, QuantSpec(weight_grid='codebook'))
    tensors, info = as_tensors(name, codes, scales, grid)
    with pytest.raises(ArtifactError, match=r'codebook must be int8 \(48, 16\)'):
        layer_int8(dict(tensors, **{f'w/{name}.codebook': tensors[f'w/{name}.codebook'][:, :8]}), name, info)
    with pytest.raises(ArtifactError, match='levels must be ascending'):
        layer_int8(dict(tensors, **{f'w/{name}.codebook': tensors[f'w/{name}.codebook'][:, ::-1].copy()}), name, info)
    with pytest.raises(ArtifactError, match="grid='lattice' is not one of"):
        layer_int8(tensors, name, dict(info, grid='lattice'))
    with pytest.raises(ValueError, match="weight_grid='codebook': needs weight_bits=4"):
        QuantSpec(weight_grid='codebook', weight_bits=8)


@pytest.mark.parametrize('act_order', [False, True])
def test_hessian_clipping_never_increases_the_hessian_weighted_error(act_order):
    from gplq_ros.offline.primitives import weight_scales
    from gplq_ros.offline.weight_ptq import gptq_codes
    for seed in range(3):
        w, h = layer_problem(seed)
        spec = QuantSpec(weight_clip='hessian', act_order=act_order)
        codes, scales, grid, err, minmax = search_layer(w, h, 4, spec)
        # min-max (ratio 1) and the MSE scales are candidates of the search: <= by construction (1e-9: float64)
        assert grid is None and bool((err <= minmax * (1 + 1e-9)).all())
        # nor more than the plain MSE-clipped scales with GPTQ
        s = weight_scales(w, 4, None, 'mse')
        perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(w.shape[1])
        c = gptq_codes(w[:, perm], h[perm][:, perm], s, 4, None)[:, torch.argsort(perm)]
        assert bool((err <= hessian_error(w, c.double() * s.double(), h) * (1 + 1e-9)).all())
        assert float(err.sum()) < float(minmax.sum())       # and clipping helps somewhere
        torch.testing.assert_close(hessian_error(w, codes.double() * scales.double(), h), err, rtol=1e-5, atol=0)


@pytest.fixture(scope='module')
def crops(images):
    return make_crops([images['2019_YELL_2_541000_4977000_image_crop.png']], 4, seed=1)


def test_bias_correction_lowers_every_layer_output_error(extractor, crops):
    spec = QuantSpec(weight_method='rtn', attention='qk_int8')
    qm = QuantDinoV2(extractor, spec)
    init_quantizers(qm, crops, 'minmax', 4)
    stage2(qm, spec, None)
    inputs, hooks = {}, []
    for name, lin in qm.linears.items():
        hooks.append(lin.register_forward_hook(
            lambda m, inp, out, name=name: inputs.setdefault(name, []).append(inp[0].detach())))
    with torch.no_grad(), qm.modes(act=True, weight=True):
        for x in batches_of(crops, 2):
            qm.block_tokens(x)
    for hk in hooks:
        hk.remove()
    report = correct_biases(qm, batches_of(crops, 2))
    assert set(report) == set(qm.linears)
    for name, lin in qm.linears.items():
        x = torch.cat(inputs[name]).reshape(-1, lin.weight.shape[1])
        with torch.no_grad():
            xq = lin.in_quant(x)
            err = x @ lin.weight.T - xq @ lin.weight_q.T            # FP32 layer minus quantized layer (no bias)
        before, after = float((err ** 2).mean()), float(((err - lin.bias_delta) ** 2).mean())
        assert after < before, name


def test_mixed_grid_artifact_round_trips_exactly(extractor, crops, tmp_path):
    """Multiplier layers and codebook layers (and bias correction) in one artifact: the
    fake-quant model loaded from it equals the calibrated one; a version-1 file may not claim
    a grid. (Its export on both backends: tests/test_ort_graph.py, on such an artifact.)"""
    from gplq_ros.offline.api import Artifact
    from gplq_ros.onboard.fileformat import BACKBONE_ID
    kept = ('blocks.0.', 'blocks.1.', 'blocks.6.', 'blocks.11.')      # the other blocks stay FP32 (time)
    spec = QuantSpec(weight_grid='multiplier', weight_method='rtn', rotation='orthogonal', attention='qk_int8',
                     keep_8bit=['blocks.11.mlp.fc2'],      # GPTQ on the grids: the tests above
                     exclude=[f'blocks.{b}.{k}' for b in range(12) if f'blocks.{b}.' not in kept
                              for k in ('attn.qkv', 'attn.proj', 'mlp.fc1', 'mlp.fc2')])
    qm = QuantDinoV2(extractor, spec)
    init_quantizers(qm, crops, 'minmax', 4)
    stage2(qm, spec, None)
    for name in ('blocks.1.attn.proj', 'blocks.6.attn.proj', 'blocks.6.attn.qkv'):   # the k-means takes time
        quantize_layer(qm.linears[name], 4, replace(spec, weight_grid='codebook'), None)
    correct_biases(qm, batches_of(crops[:2], 2))
    qm.set_modes(act=True, weight=True)
    tensors, layers = export_tensors(qm)
    path = tmp_path / 'grids.safetensors'
    Artifact(tensors, {'backbone': BACKBONE_ID, 'weights_sha256': qm.extractor.weights_sha256, 'tag': 'w4a8',
                       'spec': spec.to_dict(), **layers}).save(path)
    _, meta = load_artifact(path)
    grids = [i.get('grid', 'uniform') for i in meta['layers'].values()]
    assert meta['version'] == 2 and len(grids) == 16 and grids.count('codebook') == 3 and grids.count('uniform') == 1
    loaded, _ = fakequant_model(path, qm.extractor.weights_sha256)
    with torch.no_grad():
        for u, v in zip(qm.block_tokens(crops[0]), loaded.block_tokens(crops[0])):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=0)
    # without the grid tensors and fields it is an ordinary version-1 file; a version-1 file
    # that names a grid is refused
    bad = tmp_path / 'v1.safetensors'
    plain = {k: {kk: vv for kk, vv in v.items() if kk not in ('grid', 'grid_group')} for k, v in meta['layers'].items()}
    save_artifact(bad, {k: v for k, v in tensors.items() if not k.endswith(('.mult', '.codebook'))},
                  dict(meta, layers=plain))
    assert load_artifact(bad)[1]['version'] == 1
    from safetensors.numpy import load_file, save_file
    import json as _json
    forged = tmp_path / 'forged.safetensors'
    t = load_file(str(path))
    save_file(t, str(forged), metadata={'gplq_ros': _json.dumps(dict(meta, version=1))})
    with pytest.raises(ArtifactError, match="version=1 but layer blocks.0.attn.proj has grid='multiplier'"):
        load_artifact(forged)


@pytest.mark.parametrize('kind', ['multiplier', 'codebook'])
def test_learned_rounding_moves_between_neighbours_of_the_grid(kind):
    from gplq_ros.offline.primitives import ActQuantizer
    from gplq_ros.offline.quantized import QLinear
    from gplq_ros.offline.rounding import SoftRounding
    w, h = layer_problem(1)
    lin = QLinear(torch.nn.Linear(128, 48), ActQuantizer(8, name='x'), 'blocks.0.mlp.fc1')
    with torch.no_grad():
        lin.weight.copy_(w)
    codes, scales, grid, _, _ = search_layer(w, h, 4, QuantSpec(weight_grid=kind, grid_group=16))
    lin.set_quantized(codes, scales, 4, None, grid)
    r = SoftRounding(lin)
    assert torch.equal(r.codes(), lin.codes)            # starts at the GPTQ codes
    assert bool(((r() - lin.weight_q).abs() <= 0.1 * r.step.abs() + 1e-6).all())   # h starts at 0.9 or 0.1
    with torch.no_grad():
        r.v.fill_(10.0)                                   # every weight rounds up: its upper neighbour
    up = r.codes()
    torch.testing.assert_close(r(), lin.values(up))
    assert bool(((up.long() - r.lo.long() == 1) | (up.long() == 7)).all())
