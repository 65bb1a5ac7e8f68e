"""Stage 2: uniform weight PTQ with activation quantizers frozen, and the basin check.

Scales: symmetric, per output channel or per group, clip ratio by MSE search
(``offline.primitives.weight_scales``). Rounding: round-to-nearest ('rtn') or GPTQ
('gptq': column-by-column rounding that pushes each column's error onto the columns
not yet quantized through the inverse Hessian ``H = X^T X`` of the layer's quantized
inputs; scales stay the MSE-searched ones).
"""
from dataclasses import replace
from typing import Dict, Iterable, Optional

import torch

from gplq_ros.offline.primitives import weight_codes, weight_qrange, weight_scales
from gplq_ros.offline.spec import QuantSpec


@torch.no_grad()
def collect_hessians(qm, batches: Iterable[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """H = sum X^T X of every quantized Linear's (activation-quantized) input."""
    hs: Dict[str, torch.Tensor] = {}
    hooks = []
    for name, lin in qm.linears.items():
        def hook(_m, _inp, out, name=name):
            x = out.reshape(-1, out.shape[-1]).double()
            h = x.T @ x
            hs[name] = hs[name] + h if name in hs else h
        hooks.append(lin.in_quant.register_forward_hook(hook))
    try:
        with qm.modes(act=True, weight=False):
            for x in batches:
                qm.block_tokens(x)
    finally:
        for h in hooks:
            h.remove()
    return hs


@torch.no_grad()
def gptq_codes(w: torch.Tensor, h: torch.Tensor, scales: torch.Tensor, bits: int,
               group_size: Optional[int], damp: float = 0.01, block: int = 128) -> torch.Tensor:
    """GPTQ rounding of w (out, in) with fixed scales (out, n_groups)."""
    qmin, qmax = weight_qrange(bits)
    w = w.double().clone()
    h = h.double().clone()
    n = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(n, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    gs = group_size or n
    codes = torch.zeros_like(w, dtype=torch.int8)
    s_col = scales.double().repeat_interleave(gs, dim=1) if scales.shape[1] > 1 else scales.double().expand(-1, n)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            s = s_col[:, i1 + i]
            c = torch.clamp(torch.round(col / s), qmin, qmax)
            codes[:, i1 + i] = c.to(torch.int8)
            e = (col - c * s) / hinv1[i, i]
            w1[:, i:] -= e[:, None] @ hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes


def quantize_layer(lin, bits: int, spec: QuantSpec, h: Optional[torch.Tensor]) -> None:
    w = lin.weight.detach().float()
    scales = weight_scales(w, bits, spec.group_size, spec.weight_clip)
    if spec.weight_method == 'gptq' and h is not None and spec.act_order:
        # act-order: columns with the largest Hessian diagonal (most active inputs) first, so
        # their rounding error is absorbed by the many columns after them (per-channel scales only)
        perm = torch.argsort(torch.diag(h), descending=True)
        codes = gptq_codes(w[:, perm], h[perm][:, perm], scales, bits, None, spec.gptq_damp)[:, torch.argsort(perm)]
    elif spec.weight_method == 'gptq' and h is not None:
        codes = gptq_codes(w, h, scales, bits, spec.group_size, spec.gptq_damp)
    else:
        codes = weight_codes(w, scales, bits, spec.group_size)
    lin.set_quantized(codes, scales.float(), bits, spec.group_size)


def basin_drift(qm) -> Dict[str, float]:
    """||W_q - W|| / ||W|| per layer, and 'overall' over all quantized layers."""
    out, num, den = {}, 0.0, 0.0
    for name, lin in qm.linears.items():
        if lin.weight_q is None:
            continue
        d = float((lin.weight_q - lin.weight).norm())
        n = float(lin.weight.norm())
        out[name] = d / n
        num += d * d
        den += n * n
    out['overall'] = (num / den) ** 0.5 if den else 0.0
    return out


def stage2(qm, spec: QuantSpec, hessians: Optional[Dict[str, torch.Tensor]],
           eps_basin: float = 0.1, enforce_basin: bool = False) -> Dict[str, object]:
    """Quantize every block Linear; with ``enforce_basin`` re-quantize layers whose
    relative drift exceeds ``eps_basin`` at 8 bits (listed in the result). ``spec`` is not
    changed: the result's ``spec`` is the one that was applied (``keep_8bit`` extended by
    the enforced layers). The quantized weights are used once ``qm.set_modes(weight=True)``."""
    for name, lin in qm.linears.items():
        if name in spec.exclude:
            continue
        bits = 8 if name in spec.keep_8bit else spec.weight_bits
        quantize_layer(lin, bits, spec, (hessians or {}).get(name))
    drift = basin_drift(qm)
    over = [n for n, d in drift.items() if n != 'overall' and d > eps_basin]
    kept = []
    if enforce_basin:
        for name in over:
            if qm.linears[name].bits < 8:
                quantize_layer(qm.linears[name], 8, spec, (hessians or {}).get(name))
                kept.append(name)
        spec = replace(spec, keep_8bit=sorted(set(spec.keep_8bit) | set(kept)))
        drift = basin_drift(qm)
    return {'drift': drift, 'eps_basin': eps_basin, 'over_eps': over, 'kept_8bit': kept, 'spec': spec}
