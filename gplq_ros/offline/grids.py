"""4-bit weight grids that decode exactly into per-output-channel int8 weights (torch).

The int8 kernels of ONNX Runtime and OpenVINO take one scale per output channel. A 4-bit
code q in [-8, 7] on such a kernel is ``w = s_c * q``: the whole channel shares one step.
Two grids give each channel more shape while every decoded weight stays an int8 value
times the channel's scale (``onboard.artifact`` stores and decodes them, numpy only):

* ``multiplier``: ``w = s_c * k_g * q``, an integer multiplier k_g in [1, 15] per group of
  ``grid_group`` input channels (k_g * q in [-120, 105]). Groups of small weights get a
  finer step, as with group-wise float scales, without a second float scale.
* ``codebook``: ``w = s_c * L_c[q + 8]``, 16 ascending int8 levels per output channel from
  a k-means of the channel's weights (in units of s_c), each weight weighted by its input's
  Hessian diagonal (how much that input moves the output).

``candidates`` proposes, per clip ratio, the per-channel scale and grid that best fit the
weights under that weighting (before GPTQ); ``offline.weight_ptq`` runs GPTQ on each and
keeps, per output channel, the candidate with the smallest Hessian-weighted error.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

MULT_MAX = 15
CODE_MIN, CODE_MAX = -8, 7
LEVELS = 16
INT8_MIN, INT8_MAX = -128, 127


@dataclass
class Grid:
    """A layer's 4-bit grid beyond the uniform one: ``mult`` (out, in / group) integer
    multipliers of a 'multiplier' grid, or ``levels`` (out, 16) ascending int8 levels of a
    'codebook' grid (both held as int16 tensors)."""
    kind: str
    mult: Optional[torch.Tensor] = None
    group: Optional[int] = None
    levels: Optional[torch.Tensor] = None

    def int8_values(self, codes: torch.Tensor) -> torch.Tensor:
        """The int8 value (as float) of every 4-bit code (out, in)."""
        c = codes.long()
        if self.kind == 'multiplier':
            return (self.mult.repeat_interleave(self.group, dim=1).float() * c.float())
        return torch.gather(self.levels.float(), 1, c - CODE_MIN)

    def rows(self, index: torch.Tensor, others: Sequence['Grid']) -> 'Grid':
        """Row r from ``others[index[r]]`` (the per-channel choice among candidates)."""
        if self.kind == 'multiplier':
            stack = torch.stack([g.mult for g in others])
            return Grid('multiplier', stack[index, torch.arange(len(index))], self.group)
        stack = torch.stack([g.levels for g in others])
        return Grid('codebook', levels=stack[index, torch.arange(len(index))])


def _weighted_err(w, v, d):
    return ((v - w) ** 2 * d)


def multiplier_fit(w: torch.Tensor, d: torch.Tensor, group: int, ratio: float) -> Tuple[torch.Tensor, Grid]:
    """Per-channel scale ``s_c = ratio * max|w| / (15 * 7)`` and per group the k in [1, 15]
    with the smallest ``d``-weighted squared rounding error (w: (out, in), d: (in,))."""
    out_f, in_f = w.shape
    if in_f % group:
        raise ValueError(f'grid_group={group} does not divide the {in_f} input channels')
    s_c = (w.abs().amax(1, keepdim=True).clamp_min(1e-12) * ratio / (MULT_MAX * CODE_MAX))
    g = w.reshape(out_f, in_f // group, group)
    dg = d.reshape(1, in_f // group, group)
    best_err = torch.full(g.shape[:2], float('inf'), dtype=w.dtype, device=w.device)
    best_k = torch.full(g.shape[:2], MULT_MAX, dtype=torch.int16, device=w.device)
    for k in range(1, MULT_MAX + 1):
        s = (s_c * k)[..., None]
        v = torch.clamp(torch.round(g / s), CODE_MIN, CODE_MAX) * s
        err = _weighted_err(g, v, dg).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_k = torch.where(better, torch.full_like(best_k, k), best_k)
    return s_c, Grid('multiplier', best_k, group)


def codebook_fit(w: torch.Tensor, d: torch.Tensor, ratio: float, iters: int = 12) -> Tuple[torch.Tensor, Grid]:
    """Per-channel scale ``s_c = ratio * max|w| / 127`` and 16 int8 levels per channel: a
    ``d``-weighted k-means of ``w / s_c`` started on the uniform 4-bit grid, levels rounded to
    integers in [-128, 127] and sorted."""
    s_c = w.abs().amax(1, keepdim=True).clamp_min(1e-12) * ratio / INT8_MAX
    u = torch.clamp(w / s_c, INT8_MIN, INT8_MAX)
    step = INT8_MAX / CODE_MAX
    levels = (torch.arange(CODE_MIN, CODE_MAX + 1, dtype=w.dtype, device=w.device) * step)
    levels = levels.clamp(INT8_MIN, INT8_MAX).expand(w.shape[0], LEVELS).clone()
    dd = d[None, :].expand_as(u)
    for _ in range(iters):
        idx = (u[..., None] - levels[:, None, :]).abs().argmin(-1)
        num = torch.zeros_like(levels).scatter_add_(1, idx, u * dd)
        den = torch.zeros_like(levels).scatter_add_(1, idx, dd)
        levels = torch.where(den > 0, num / den.clamp_min(1e-30), levels)
    levels = torch.sort(torch.round(levels).clamp(INT8_MIN, INT8_MAX), dim=1).values
    return s_c, Grid('codebook', levels=levels.to(torch.int16))


def candidates(w: torch.Tensor, d: torch.Tensor, kind: str, ratios: Sequence[float],
               group: Optional[int] = None) -> List[Tuple[torch.Tensor, Grid]]:
    """(per-channel scales (out, 1), grid) per clip ratio, for GPTQ to choose among."""
    if kind == 'multiplier':
        return [multiplier_fit(w, d, group, r) for r in ratios]
    if kind == 'codebook':
        return [codebook_fit(w, d, r) for r in ratios]
    raise ValueError(f'unknown weight grid {kind!r} (multiplier|codebook)')
