"""Fidelity of a quantized model against FP32 on images it was not calibrated on (torch
fake-quant model vs the FP32 extractor).

Per image (whole, plus ``views`` random crops/flips/rotations): final and per-layer
patch-token cosine, final-token MSE, boundary-map SSIM (patch grid), corner repeatability
(fraction of FP32 top-k corners with a quantized corner within 1 patch) and VLAD
descriptor cosine (same vocabulary for both); over all views, ``descriptor_top1``: the
fraction of quantized descriptors whose nearest FP32 descriptor is their own view's.
"""
from typing import Dict

import numpy as np
import torch

from gplq_ros.offline.data import random_views
from gplq_ros.onboard.metrics import corner_repeatability, ssim, token_cosine
from gplq_ros.onboard.pipeline import PipelineConfig, run_heads
from gplq_ros.onboard.preprocess import prepare

METRICS = ('final_cosine', 'output_mse', 'boundary_ssim', 'corner_repeatability', 'descriptor_cosine')


def _grid_xy(corners) -> np.ndarray:
    return np.stack([corners.cols, corners.rows], axis=1)


def compare(ext, qm, image: np.ndarray, cfg: PipelineConfig, centers) -> Dict[str, object]:
    prep = prepare(image, cfg.long_side)
    x = torch.from_numpy(prep.tensor)
    vkey = (cfg.vlad_block, cfg.vlad_facet)
    with torch.inference_mode():
        fl, ql = ext.block_tokens(x), qm.block_tokens(x)
        fv, qv = ext(x, [vkey])[vkey], qm(x, [vkey])[vkey]
    fo = run_heads(cfg, prep, fl[-1][0].numpy(), fv[0].numpy(), centers)
    qo = run_heads(cfg, prep, ql[-1][0].numpy(), qv[0].numpy(), centers)
    per_layer = [token_cosine(a[0].numpy(), b[0].numpy()) for a, b in zip(fl, ql)]
    return {
        'final_cosine': per_layer[-1],
        'per_layer_cosine': per_layer,
        'output_mse': float(np.mean((fo.tokens - qo.tokens) ** 2)),
        'boundary_ssim': ssim(fo.boundary, qo.boundary),
        'corner_repeatability': corner_repeatability(_grid_xy(fo.corners), _grid_xy(qo.corners), radius=1),
        'descriptor_cosine': float(fo.descriptor @ qo.descriptor) if centers is not None else None,
        'fp': fo, 'q': qo,
    }


def evaluate(ext, qm, images: Dict[str, np.ndarray], cfg: PipelineConfig, centers,
             views: int = 4, seed: int = 1, whole: Dict[str, dict] = None, progress=None) -> Dict[str, object]:
    """Metrics over every view; ``whole``, if given, receives each whole image's full
    ``compare`` result (FP32 and quantized outputs included) for pictures."""
    rng = np.random.default_rng(seed)
    rows, fp_desc, q_desc = [], [], []
    for i, (name, img) in enumerate(images.items()):
        if progress:
            progress('held-out report', i, len(images), {})
        for v, view in enumerate([img] + random_views(img, views, rng)):
            r = compare(ext, qm, view, cfg, centers)
            if v == 0 and whole is not None:
                whole[name] = r
            if centers is not None:
                fp_desc.append(r['fp'].descriptor)
                q_desc.append(r['q'].descriptor)
            r = {k: val for k, val in r.items() if k not in ('fp', 'q')}
            rows.append(dict(r, image=name, view=v))
    summary = {}
    for m in METRICS + ('per_layer_cosine',):
        vals = np.array([r[m] for r in rows if r[m] is not None], dtype=np.float64)
        if vals.size:
            summary[m] = {'mean': vals.mean(0).round(6).tolist(), 'min': vals.min(0).round(6).tolist()}
    if len(fp_desc) > 1:
        # place recognition as used: does each quantized descriptor find its own view's FP32
        # descriptor first among all evaluated views (an FP32 map, quantized queries)?
        sim = np.stack(q_desc) @ np.stack(fp_desc).T
        hit = float(np.mean(np.argmax(sim, axis=1) == np.arange(len(sim))))
        summary['descriptor_top1'] = {'mean': hit, 'min': hit}
    return {'summary': summary, 'rows': rows, 'n': len(rows)}
