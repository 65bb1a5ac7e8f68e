"""Learned weight rounding by block reconstruction (after AdaRound and BRECQ).

Stage 2 fixes each weight's scale (MSE clip search) and its integer code (GPTQ or nearest).
Here, block by block, every code of the block's quantized Linears is re-chosen between two
neighbours ``lo`` and ``lo + 1``: the pair that holds the stage-2 code and lies towards
``w / s`` (``floor`` and ``ceil`` of ``w / s`` wherever the code is one of them; the scales
stay). A continuous variable ``v`` per weight gives the rounding
``h(v) = clip(sigmoid(v) (zeta - gamma) + gamma, 0, 1)``, started at the stage-2 code (h = 0.9
or 0.1: GPTQ's solution is the starting point, not round-to-nearest); Adam
minimizes the block's output error, relative to the FP32 block's output power,

    L = ||y_q - y_fp||^2 / ||y_fp||^2 + lam * mean(1 - |2 h - 1|^beta)

where ``y_q`` is the block (activation quantizers on, as calibrated in stage 1) run on the
input the already refined quantized blocks before it produce, and ``y_fp`` the FP32 block on
the FP32 input; ``beta`` falls from 20 to 2 after a warm-up without the rounding term, which
then drives every ``h`` to 0 or 1. The codes are finally the hard rounding ``v >= 0``.
The result is an ordinary stage-2 result: integer codes and the same scales (same artifact,
same graph, same speed). Blocks are refined in order; activation quantizers are not changed.
"""
import contextlib
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from gplq_ros.offline.calibration import model_device
from gplq_ros.offline.progress import Budget
from gplq_ros.offline.primitives import weight_qrange

ZETA, GAMMA = 1.1, -0.1


class SoftRounding(nn.Module):
    """The learnable rounding of one quantized Linear, on its grid (``QLinear.values``):
    uniform per-channel or grouped scales, a 'multiplier' grid (per-weight step s_c * k_g) or
    a 'codebook' grid (neighbouring levels, unevenly spaced)."""

    def __init__(self, lin, start: float = 0.9):
        super().__init__()
        w = lin.weight.detach().float()
        self.qmin, self.qmax = weight_qrange(lin.bits)
        code = lin.codes.long()
        # each weight chooses between lo and lo + 1, the pair that holds its stage-2 code and
        # lies towards w (the code's value above w: the lower neighbour); the soft rounding
        # starts at that code (h = start or 1 - start)
        up = lin.values(code).float() > w
        lo = torch.where(up, code - 1, code)
        self.register_buffer('lo', lo.float())
        base = lin.values(lo.clamp(self.qmin, self.qmax)).float()
        self.register_buffer('base', base)
        self.register_buffer('step', lin.values((lo + 1).clamp(self.qmin, self.qmax)).float() - base)
        h0 = torch.where(up, torch.full_like(w, start), torch.full_like(w, 1 - start))
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (h0 - GAMMA) - 1))

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self) -> torch.Tensor:
        return self.base + self.h() * self.step

    def rounding_penalty(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).mean()

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        return torch.clamp(self.lo + (self.v >= 0).float(), self.qmin, self.qmax).to(torch.int8)

    @torch.no_grad()
    def undecided(self) -> float:
        """Fraction of weights whose soft rounding is still away from 0 and 1 (> 0.01)."""
        h = self.h()
        return float(((h > 0.01) & (h < 0.99)).float().mean())


@contextlib.contextmanager
def soft_weights(linears: Dict[str, nn.Module], rounders: Dict[str, SoftRounding]):
    """The Linears use their soft-rounded weights inside the block; restored on exit."""
    saved = {n: linears[n].soft_weight for n in rounders}
    for n, r in rounders.items():
        linears[n].soft_weight = r
    try:
        yield
    finally:
        for n, s in saved.items():
            linears[n].soft_weight = s


def _batched(fn, xs: torch.Tensor, batch: int) -> torch.Tensor:
    """``fn`` over ``xs`` in batches, concatenated (no gradients)."""
    with torch.no_grad():
        return torch.cat([fn(xs[i:i + batch]) for i in range(0, len(xs), batch)])


def _relative_error(blk, xs: torch.Tensor, ys: torch.Tensor, batch: int) -> float:
    return float(((_batched(blk, xs, batch) - ys) ** 2).sum() / (ys ** 2).sum())


def refine_rounding(qm, crops: Sequence[torch.Tensor], iters: int, lr: float = 0.05, lam: float = 1.0,
                    batch: int = 8, warmup: float = 0.2, beta=(20.0, 2.0), seed: int = 0,
                    progress: Optional[Callable[[str, int, int, dict], None]] = None,
                    budget: Optional[Budget] = None, reserve_s: float = 0.0) -> Dict[str, object]:
    """Re-choose the codes of every quantized block Linear of ``qm`` (after stage 2, and after
    any mixed-precision choice) on ``crops`` (normalized (1, 3, h, w) tensors). Returns per
    block the relative output error before and after, the fraction of weights whose code
    changed, the undecided fraction before the final hard rounding, the steps per block and
    the wall time. With a ``budget``, each block's steps are cut to what fits in the time left
    (less ``reserve_s`` for later stages), at the pace measured so far."""
    dev = model_device(qm)
    x = torch.cat(list(crops)).to(dev)
    rng = np.random.default_rng(seed)
    blocks = qm.extractor.vit.blocks
    report: Dict[str, List] = {'before': [], 'after': [], 'changed': [], 'undecided': []}
    t0 = time.perf_counter()
    with qm.modes(act=False, weight=False, comp=False):
        fp_in = _batched(qm.extractor.embed, x, batch)
    with qm.modes(act=True, weight=True, comp=False):
        q_in = _batched(qm.extractor.embed, x, batch)
    n = len(x)
    report['iters'] = []
    spent_iters, spent_s = 0, 0.0
    for bi, blk in enumerate(blocks):
        todo = len(blocks) - bi
        n_iters = iters
        if budget is not None and spent_iters:
            n_iters = budget.fit(todo * iters, spent_s / spent_iters, reserve_s=reserve_s, minimum=todo) // todo
        with qm.modes(act=False, weight=False, comp=False):
            fp_out = _batched(blk, fp_in, batch)
        names = [nm for nm, lin in qm.linears.items()
                 if nm.startswith(f'blocks.{bi}.') and lin.weight_q is not None and nm not in qm.spec.exclude]
        rounders = {nm: SoftRounding(qm.linears[nm]).to(dev) for nm in names}
        power = float((fp_out ** 2).mean())
        with qm.modes(act=True, weight=True, comp=False):
            before = _relative_error(blk, q_in, fp_out, batch)
            old = {nm: qm.linears[nm].codes.clone() for nm in names}
            opt = torch.optim.Adam([r.v for r in rounders.values()], lr=lr)
            start = int(warmup * n_iters)
            t_block = time.perf_counter()
            with soft_weights(qm.linears, rounders):
                for it in range(n_iters):
                    if budget is not None and bi == 0 and it == 10:     # the pace, before most of block 0
                        pace = (time.perf_counter() - t_block) / 10
                        n_iters = max(10, budget.fit(len(blocks) * iters, pace, reserve_s=reserve_s,
                                                     minimum=len(blocks)) // len(blocks))
                        start = int(warmup * n_iters)
                        if n_iters < iters and progress:
                            progress('learned rounding', it, len(blocks) * n_iters,
                                     {'note': f'budget_s={budget.seconds:g}: {n_iters} of {iters} steps per block fit'})
                    if it >= n_iters:
                        break
                    idx = torch.as_tensor(rng.choice(n, size=min(batch, n), replace=False), device=dev)
                    rec = ((blk(q_in[idx]) - fp_out[idx]) ** 2).mean() / power
                    loss = rec
                    if it >= start:
                        frac = (it - start) / max(1, n_iters - start)
                        b = beta[0] + (beta[1] - beta[0]) * frac
                        loss = rec + lam * torch.stack([r.rounding_penalty(b) for r in rounders.values()]).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if progress:
                        progress('learned rounding', spent_iters + it + 1, spent_iters + todo * n_iters,
                                 {'block': bi, 'rec': float(rec.detach())})
            spent_iters += n_iters
            spent_s += time.perf_counter() - t_block
            report['iters'].append(n_iters)
            undecided = float(np.mean([r.undecided() for r in rounders.values()])) if rounders else 0.0
            for nm, r in rounders.items():
                lin = qm.linears[nm]
                lin.set_quantized(r.codes(), lin.scales, lin.bits, lin.group_size, lin.grid)
            after = _relative_error(blk, q_in, fp_out, batch)
            if after > before:  # never worse on the crops than stage 2 left it
                for nm in names:
                    lin = qm.linears[nm]
                    lin.set_quantized(old[nm], lin.scales, lin.bits, lin.group_size, lin.grid)
                after = before
            changed = sum(float((qm.linears[nm].codes != old[nm]).sum()) for nm in names)
            total = sum(qm.linears[nm].weight.numel() for nm in names) or 1
            q_in = _batched(blk, q_in, batch)
        fp_in = fp_out
        report['before'].append(float(f'{before:.4g}'))
        report['after'].append(float(f'{after:.4g}'))
        report['changed'].append(round(changed / total, 4))
        report['undecided'].append(round(undecided, 4))
    report['wall_s'] = round(time.perf_counter() - t0, 1)
    return report
