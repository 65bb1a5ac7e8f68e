"""Fidelity metrics (numpy) and the gradient-alignment check (torch).

* token cosine: mean over patches of cos(A_fp, A_q);
* SSIM of two maps in [0, 1] (Gaussian window sigma 1.5, C1 = (0.01)^2, C2 = (0.03)^2);
* corner repeatability: fraction of FP32 corners with a quantized corner within
  ``radius`` patches (Chebyshev distance);
* gradient alignment: cos(grad_theta L_fp, grad_theta L_q) per Linear weight and overall
  for the label-free surrogate L = 1 - mean_patches cos(f_theta(x'), t(x)): cross-view
  consistency between the final tokens of a photometrically augmented view x' (contrast
  x0.7, brightness +0.3 in normalized units, horizontal flip undone on the token grid) and
  the fixed FP32 tokens t(x) of the original view. The quantized gradient reaches the
  FP32 weights through the straight-through weight quantizer.
"""
from typing import Dict, Sequence

import cv2
import numpy as np


def token_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    k = 2 * int(np.ceil(3 * sigma)) + 1

    def blur(x):
        return cv2.GaussianBlur(x, (k, k), sigma, borderType=cv2.BORDER_REFLECT)
    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a ** 2
    sbb = blur(b * b) - mu_b ** 2
    sab = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return float(s.mean())


def corner_repeatability(fp, q, radius: int = 1) -> float:
    if len(fp.rows) == 0:
        return 1.0
    if len(q.rows) == 0:
        return 0.0
    d = np.maximum(np.abs(fp.rows[:, None] - q.rows[None]), np.abs(fp.cols[:, None] - q.cols[None]))
    return float(np.mean(d.min(axis=1) <= radius))


def gradient_alignment(qm, inputs: Sequence, batch: int = 4, batches: int = 2) -> Dict[str, object]:
    import torch

    gh, gw = inputs[0].shape[2] // 14, inputs[0].shape[3] // 14
    dev = next(qm.parameters()).device
    xs = [torch.cat(list(inputs[i * batch:(i + 1) * batch])).to(dev) for i in range(batches)]
    with torch.no_grad():
        qm.act_enabled(False).weight_enabled(False)
        targets = [qm.block_tokens(x)[-1] for x in xs]

    def surrogate(x, target):
        view = torch.flip(x * 0.7 + 0.3, dims=[3])
        b = qm.block_tokens(view)[-1]
        b = torch.flip(b.reshape(b.shape[0], gh, gw, -1), dims=[2]).reshape_as(target)
        return 1 - torch.nn.functional.cosine_similarity(b, target, dim=-1).mean()

    weights = {n: lin.weight for n, lin in qm.linears.items()}
    grads = {}
    for mode in ('fp', 'q'):
        qm.act_enabled(mode == 'q').weight_enabled(mode == 'q')
        for w in weights.values():
            w.requires_grad_(True)
            w.grad = None
        for x, t in zip(xs, targets):
            surrogate(x, t).backward()
        grads[mode] = {n: w.grad.detach().clone() for n, w in weights.items()}
        for w in weights.values():
            w.requires_grad_(False)
            w.grad = None
    qm.act_enabled(True).weight_enabled(True)
    per = {}
    for n in weights:
        g1, g2 = grads['fp'][n].flatten(), grads['q'][n].flatten()
        per[n] = float(torch.nn.functional.cosine_similarity(g1, g2, dim=0))
    g1 = torch.cat([grads['fp'][n].flatten() for n in weights])
    g2 = torch.cat([grads['q'][n].flatten() for n in weights])
    return {'per_layer': per, 'overall': float(torch.nn.functional.cosine_similarity(g1, g2, dim=0)),
            'surrogate': 'cross-view consistency: photometric jitter + flip vs FP32 tokens'}
