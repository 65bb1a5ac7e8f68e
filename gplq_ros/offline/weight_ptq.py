"""Stage 2: uniform weight PTQ with activation quantizers frozen, and the basin check.

Scales: symmetric, per output channel or per group, clip ratio by MSE search
(``offline.primitives.weight_scales``). Rounding: round-to-nearest ('rtn') or GPTQ
('gptq': column-by-column rounding that pushes each column's error onto the columns
not yet quantized through the inverse Hessian ``H = X^T X`` of the layer's quantized
inputs; scales stay the MSE-searched ones). With ``weight_clip='hessian'`` or a 4-bit
'multiplier' / 'codebook' grid (``offline.grids``), ``search_layer`` runs GPTQ for several
clip ratios and keeps per output channel the result with the least Hessian-weighted error.
``correct_biases``: closed-form bias correction after the weights are final.
"""
import contextlib
from dataclasses import replace
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch

from gplq_ros.offline.grids import candidates
from gplq_ros.offline.primitives import weight_codes, weight_qrange, weight_scales
from gplq_ros.offline.spec import QuantSpec


@contextlib.contextmanager
def _linear_inputs(qm, names, record: Callable[[str, torch.Tensor, torch.Tensor], None]):
    """Inside the block, ``record(name, x, Q(x))`` hears the input of each Linear of ``names``
    before and after its activation quantizer; the hooks go on exit."""
    hooks = [qm.linears[n].in_quant.register_forward_hook(lambda _m, inp, out, n=n: record(n, inp[0], out))
             for n in names]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def collect_hessians(qm, batches: Iterable[torch.Tensor], progress=None) -> Dict[str, torch.Tensor]:
    """H = sum X^T X of every quantized Linear's (activation-quantized) input."""
    hs: Dict[str, torch.Tensor] = {}

    def record(name, _x, xq):
        x = xq.reshape(-1, xq.shape[-1]).double()
        h = x.T @ x
        hs[name] = hs[name] + h if name in hs else h
    with _linear_inputs(qm, list(qm.linears), record), qm.modes(act=True, weight=False):
        batches = list(batches)
        for i, x in enumerate(batches):
            qm.block_tokens(x)
            if progress:
                progress('Hessians', i + 1, len(batches), {})
    return hs


def _inverse_hessian(h: torch.Tensor, damp: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(upper Cholesky factor of the damped inverse Hessian, dead-input mask)."""
    h = h.double().clone()
    n = h.shape[0]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h += damp * torch.mean(torch.diag(h)) * torch.eye(n, dtype=h.dtype, device=h.device)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True), dead


@torch.no_grad()
def gptq(w: torch.Tensor, hinv: torch.Tensor, step: Optional[torch.Tensor] = None, qrange=(-8, 7),
         levels: Optional[torch.Tensor] = None, block: int = 128) -> Tuple[torch.Tensor, torch.Tensor]:
    """GPTQ on w (out, n) with the inverse-Hessian factor ``hinv``: column by column, the
    column's rounding error is pushed onto the columns not yet quantized. Each column is
    rounded to the uniform grid of ``step`` (out, n) per-weight steps (codes in ``qrange``),
    or to the nearest of each row's ``levels`` (out, L) (codes: level index + qrange[0]).
    Returns (int8 codes, dequantized values) (out, n)."""
    w = w.double().clone()
    n = w.shape[1]
    qmin, qmax = qrange
    codes = torch.zeros_like(w, dtype=torch.int8)
    values = torch.zeros_like(w)
    lv = levels.double() if levels is not None else None
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            if lv is None:
                s = step[:, i1 + i].double()
                c = torch.clamp(torch.round(col / s), qmin, qmax)
                q = c * s
            else:
                idx = (col[:, None] - lv).abs().argmin(1)
                c = idx.double() + qmin
                q = lv.gather(1, idx[:, None])[:, 0]
            codes[:, i1 + i] = c.to(torch.int8)
            values[:, i1 + i] = q
            e = (col - q) / hinv1[i, i]
            w1[:, i:] -= e[:, None] @ hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return codes, values


@torch.no_grad()
def gptq_codes(w: torch.Tensor, h: torch.Tensor, scales: torch.Tensor, bits: int,
               group_size: Optional[int], damp: float = 0.01, block: int = 128) -> torch.Tensor:
    """GPTQ rounding of w (out, in) with fixed scales (out, n_groups) on the uniform grid."""
    hinv, dead = _inverse_hessian(h, damp)
    w = w.double().clone()
    w[:, dead] = 0
    n = w.shape[1]
    gs = group_size or n
    step = scales.double().repeat_interleave(gs, dim=1) if scales.shape[1] > 1 else scales.double().expand(-1, n)
    return gptq(w, hinv, step, weight_qrange(bits), block=block)[0]


def hessian_error(w: torch.Tensor, wq: torch.Tensor, h: Optional[torch.Tensor]) -> torch.Tensor:
    """Per output channel ``(wq - w) H (wq - w)^T``: the squared output error the layer's
    weights cause on the calibration inputs (H = sum X^T X); plain squared error without H."""
    d = (wq.double() - w.double())
    return (d @ h.double() * d).sum(1) if h is not None else (d * d).sum(1)


CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def search_layer(w: torch.Tensor, h: Optional[torch.Tensor], bits: int, spec: QuantSpec):
    """Per-output-channel weights of one layer chosen by Hessian-weighted error: candidates
    (uniform grid: the mse scales and ``CLIP_RATIOS`` of max|w|; multiplier/codebook grid:
    ``offline.grids.candidates`` per ratio) are each rounded by GPTQ (``h`` given and
    ``weight_method='gptq'``, with act-order if set) or to nearest, and each output channel
    keeps the candidate with the smallest ``hessian_error``. Minmax (ratio 1) is always a
    candidate, so no channel ends worse than without clipping. Returns (codes, scales
    (out, 1), grid or None, per-channel error of the choice, per-channel error of minmax)."""
    w = w.float()
    out_f, n = w.shape
    kind = spec.weight_grid if bits == 4 else 'uniform'
    hd = torch.diag(h).float() if h is not None else torch.ones(n, device=w.device)
    d = (hd / hd.mean().clamp_min(1e-30)).clamp_min(1e-6)
    qmin, qmax = weight_qrange(bits)
    amax = w.abs().amax(1, keepdim=True).clamp_min(1e-12)
    if kind == 'uniform':
        cands = [(amax * r / qmax, None) for r in CLIP_RATIOS] + [(weight_scales(w, bits, None, 'mse'), None)]
    else:
        cands = candidates(w, d, kind, CLIP_RATIOS, spec.grid_group)
    use_gptq = spec.weight_method == 'gptq' and h is not None
    if use_gptq:
        perm = torch.argsort(torch.diag(h), descending=True) if spec.act_order else torch.arange(n)
        inv = torch.argsort(perm)
        hinv, dead = _inverse_hessian(h[perm][:, perm], spec.gptq_damp)
        wp = w[:, perm].double()
        wp[:, dead] = 0
    results = []
    for scales, grid in cands:
        if grid is None:
            step, levels = scales.double().expand(-1, n), None
        elif grid.kind == 'multiplier':
            step, levels = (grid.mult.repeat_interleave(grid.group, dim=1).double() * scales.double()), None
        else:
            step, levels = None, grid.levels.double() * scales.double()
        if use_gptq:
            codes, values = gptq(wp, hinv, None if step is None else step[:, perm], (qmin, qmax), levels)
            codes, values = codes[:, inv], values[:, inv]
        elif levels is None:
            codes = torch.clamp(torch.round(w.double() / step), qmin, qmax)
            values = codes * step
            codes = codes.to(torch.int8)
        else:
            idx = (w.double()[..., None] - levels[:, None, :]).abs().argmin(-1)
            codes, values = (idx + qmin).to(torch.int8), levels.gather(1, idx)
        results.append((codes, values, hessian_error(w, values, h)))
    errs = torch.stack([r[2] for r in results])
    best = errs.argmin(0)
    rows = torch.arange(out_f, device=w.device)
    codes = torch.stack([r[0] for r in results])[best, rows]
    scales = torch.stack([c[0].reshape(-1) for c in cands])[best, rows][:, None].float()
    grid = cands[0][1].rows(best, [c[1] for c in cands]) if kind != 'uniform' else None
    minmax = errs[0] if kind == 'uniform' else None
    return codes, scales, grid, errs[best, rows], minmax


def quantize_layer(lin, bits: int, spec: QuantSpec, h: Optional[torch.Tensor]) -> None:
    w = lin.weight.detach().float()
    if spec.weight_clip == 'hessian' or (spec.weight_grid != 'uniform' and bits == 4):
        codes, scales, grid, _, _ = search_layer(w, h, bits, spec)
        lin.set_quantized(codes, scales, bits, None, grid)
        return
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


@torch.no_grad()
def correct_biases(qm, batches: Iterable[torch.Tensor]) -> Dict[str, float]:
    """Closed-form bias correction of every quantized Linear: the mean output error over the
    calibration tokens, ``E[W x] - E[W_q Q(x)] = W E[x] - W_q E[Q(x)]`` (x the layer's input in
    the quantized model, Q its activation quantizer), is added to the bias (``bias_delta``;
    folded into the artifact's bias), so the layer's output error has zero mean on those
    tokens. One pass over ``batches`` with activations and weights quantized. Returns per
    layer ||delta|| / ||bias||."""
    sums: Dict[str, list] = {}

    def record(name, x, xq):
        x, xq = (t.reshape(-1, t.shape[-1]).double() for t in (x, xq))
        s = sums.setdefault(name, [0, 0.0, 0.0])
        s[0] += x.shape[0]
        s[1] = s[1] + x.sum(0)
        s[2] = s[2] + xq.sum(0)
    quantized = [n for n, lin in qm.linears.items() if lin.weight_q is not None]
    with _linear_inputs(qm, quantized, record), qm.modes(act=True, weight=True):
        for x in batches:
            qm.block_tokens(x)
    report = {}
    for name, (count, sx, sxq) in sums.items():
        lin = qm.linears[name]
        delta = lin.weight.double() @ (sx / count) - lin.weight_q.double() @ (sxq / count)
        lin.bias_delta = delta.to(lin.weight.dtype)
        report[name] = float(delta.norm() / lin.bias.double().norm().clamp_min(1e-12))
    return report


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
           eps_basin: float = 0.1, enforce_basin: bool = False, progress=None) -> Dict[str, object]:
    """Quantize every block Linear; with ``enforce_basin`` re-quantize layers whose
    relative drift exceeds ``eps_basin`` at 8 bits (listed in the result). ``spec`` is not
    changed: the result's ``spec`` is the one that was applied (``keep_8bit`` extended by
    the enforced layers). The quantized weights are used once ``qm.set_modes(weight=True)``."""
    for i, (name, lin) in enumerate(qm.linears.items()):
        if name in spec.exclude:
            continue
        bits = 8 if name in spec.keep_8bit else spec.weight_bits
        quantize_layer(lin, bits, spec, (hessians or {}).get(name))
        if progress:
            progress('weights', i + 1, len(qm.linears), {})
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
