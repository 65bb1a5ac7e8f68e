"""An LSQ-style quantization-aware-training baseline (for the GPLQ-vs-QAT comparison).

Same quantizer spec as the artifact it will be written to (activation quantizers, per-output-
channel symmetric weights, the same 8-bit layers) and the same crops and loss as stage 1 (the
GPLQ feature-mimicking loss against FP32, without L_reg): the FP32 weights, the weight scales
(LSQ: ``s * clip(round(w / s))`` with the straight-through estimator and LSQ's gradient scale)
and the activation quantizers' s, z are all trained with Adam, end to end. At the end the
weights are rounded with their learned scales into ordinary codes (``QLinear.set_quantized``),
so the result is a normal artifact, and the FP32 weights of ``qm`` are put back (the FP32
teacher during training is a frozen copy taken before the first step).
"""
import contextlib
import copy
import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from gplq_ros.offline.calibration import batches_of, model_device, quantizer_param_groups, record_step
from gplq_ros.offline.config import CalibConfig
from gplq_ros.offline.losses import GPLQLoss, as_grid
from gplq_ros.offline.primitives import grad_scale, round_ste, weight_qrange
from gplq_ros.offline.rounding import soft_weights


class LsqWeight(nn.Module):
    """Fake-quantized live weight of one Linear with a learnable per-output-channel scale."""

    def __init__(self, lin):
        super().__init__()
        self.lin = [lin]                      # not a sub-module: its weight is trained by the caller
        self.qmin, self.qmax = weight_qrange(lin.bits)
        self.scale = nn.Parameter(lin.scales.detach().float().clone())      # (out, 1)
        self.g = 1.0 / math.sqrt(lin.weight[0].numel() * self.qmax)

    def forward(self) -> torch.Tensor:
        w = self.lin[0].weight
        s = grad_scale(self.scale, self.g).abs().clamp_min(1e-8)
        return torch.clamp(round_ste(w / s), self.qmin, self.qmax) * s

    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        s = self.scale.abs().clamp_min(1e-8)
        return torch.clamp(torch.round(self.lin[0].weight / s), self.qmin, self.qmax).to(torch.int8)


@contextlib.contextmanager
def _trainable(params: List[nn.Parameter]):
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, r in zip(params, saved):
            p.requires_grad_(r)


def qat(qm, crops: Sequence[torch.Tensor], cfg: CalibConfig, steps: int, lr: float = 1e-6,
        progress: Optional[Callable[[int, dict], None]] = None) -> Dict[str, list]:
    """Train ``qm`` (after stage 2: per-output-channel weight codes and scales set) for ``steps``
    Adam steps over ``crops``; returns the loss history and the wall time. ``lr`` is the weights'
    step: Adam moves every weight about ``lr`` per step whatever its gradient's size, and a weight
    within ``lr`` of a rounding boundary flips its 4-bit code by a whole step (5e-3 to 1e-2 in
    DINOv2-S), a change the gradient at the old code does not predict (the oscillation of Nagel et
    al., 2022). Measured on the test's 8 crops: 1e-5 raised the training loss on both batches after
    one step (0.25 -> 0.35, 0.22 -> 0.39 after two; without weight steps it fell, 0.22 -> 0.217), and
    the final error rose 1.31x on an AMD Zen 5 where an Intel Xeon saw 0.80x; 1e-6 lowers the loss
    on both batches (0.22 -> 0.206, 0.26 -> 0.222). Scales move at the weights' relative rate,
    activation quantizers as in stage 1."""
    names = [n for n, lin in qm.linears.items() if lin.weight_q is not None and n not in qm.spec.exclude]
    if any(qm.linears[n].group_size for n in names):
        raise ValueError('qat: per-output-channel weights only (group_size=None)')
    gridded = [n for n in names if qm.linears[n].grid is not None]
    if gridded:
        raise ValueError(f'qat: uniform weight grids only; {gridded[0]} has a {qm.linears[gridded[0]].grid.kind} grid')
    dev = model_device(qm)
    lsq = {n: LsqWeight(qm.linears[n]).to(dev) for n in names}
    weights = [qm.linears[n].weight for n in names]
    quantizers = list(qm.quantizers.values())
    # scales move at the weights' relative rate: lr * |s| / |w| (|w| ~ 0.03 here, so ~0.03 % of a scale per step)
    ratio = float(np.mean([float(m.scale.detach().abs().mean() / qm.linears[n].weight.detach().abs().mean())
                           for n, m in lsq.items()]))
    groups = [{'params': weights, 'lr': lr}, {'params': [m.scale for m in lsq.values()], 'lr': lr * ratio}]
    opt = torch.optim.Adam(groups + quantizer_param_groups(quantizers, cfg.lr))
    teacher = copy.deepcopy(qm)          # FP32 targets must not move with the trained weights
    original = [w.detach().clone() for w in weights]
    loss_fn = GPLQLoss(cfg.loss)
    grid = (crops[0].shape[2] // 14, crops[0].shape[3] // 14)
    rng = np.random.default_rng(cfg.seed)
    history: Dict[str, list] = {}
    t0 = time.perf_counter()
    step = 0
    params = weights + [m.scale for m in lsq.values()] + [p for q in quantizers for p in (q.scale, q.zero_point)]
    with _trainable(params), qm.modes(act=True, weight=True), soft_weights(qm.linears, lsq):
        while step < steps:
            for x in batches_of(crops, cfg.batch, rng.permutation(len(crops)), dev):
                with torch.no_grad(), teacher.modes(act=False, weight=False):
                    fp = [as_grid(t, grid) for t in teacher.block_tokens(x)]
                out = [as_grid(t, grid) for t in qm.block_tokens(x)]
                terms = loss_fn(fp, out, [])
                opt.zero_grad(set_to_none=True)
                terms['total'].backward()
                opt.step()
                step += 1
                record_step(history, step, terms, progress, 'QAT', steps)
                if step >= steps:
                    break
    for (n, m), w0 in zip(lsq.items(), original):
        lin = qm.linears[n]
        lin.set_quantized(m.codes(), m.scale.detach().abs().clamp_min(1e-8), lin.bits, None)
        with torch.no_grad():
            lin.weight.copy_(w0)
    history['wall_s'] = [time.perf_counter() - t0]
    return history
