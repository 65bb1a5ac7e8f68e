"""Stage 1: activation-only calibration (weights FP32 and frozen).

Quantizer s, z are initialized from statistics (``init``) on ``init_crops`` crops, then (with
``CalibConfig.stage1``, method 'gplq') learned for ``stage1.epochs`` epochs with Adam on the
GPLQ loss (``CalibConfig.loss``). L_reg's gradient is applied per quantizer
(it depends only on that quantizer's s, z and input), so no graph is kept for it and
the blocks can be recomputed in the backward pass (activation checkpointing). Per
quantizer the learning rates are relative: scales step by ~``lr * mean(s0)``, zero-points by
~``5 * lr`` codes, decaying over the run (``stage1.lr_schedule``, cosine by default).
Model-agnostic: needs ``block_tokens``, ``quantizers``,
``modes`` (``offline.quantized.QuantDinoV2`` provides them). Each stage runs under
``qm.modes(...)`` and leaves the switches as it found them.
"""
import contextlib
import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from gplq_ros.offline.progress import Budget
from gplq_ros.offline.config import CalibConfig
from gplq_ros.offline.losses import GPLQLoss, as_grid


def model_device(qm) -> torch.device:
    return next(qm.parameters()).device


def batches_of(tensors: Sequence[torch.Tensor], batch: int, order=None, device=None):
    idx = list(range(len(tensors))) if order is None else list(order)
    for i in range(0, len(idx), batch):
        yield torch.cat([tensors[j] for j in idx[i:i + batch]]).to(device or 'cpu')


@torch.no_grad()
def init_quantizers(qm, inputs: Sequence[torch.Tensor], method: str, batch: int) -> None:
    """Initial s, z of every activation quantizer from FP32 statistics of ``inputs``."""
    with qm.modes(act=False, observe=True):
        for x in batches_of(inputs, batch, device=model_device(qm)):
            qm.block_tokens(x)
    for q in qm.quantizers.values():
        q.init_from_stats(method)


@contextlib.contextmanager
def _learning(quantizers):
    """Quantizer s, z trainable for the block; error tracking state cleared on exit."""
    for q in quantizers:
        q.scale.requires_grad_(True)
        q.zero_point.requires_grad_(True)
    try:
        yield
    finally:
        for q in quantizers:
            q.track_error, q.last_error, q.error_grads = False, None, None
            q.scale.requires_grad_(False)
            q.zero_point.requires_grad_(False)


def quantizer_param_groups(quantizers, lr: float) -> List[dict]:
    """Adam groups of activation quantizers, steps relative to each: scales by ~``lr * mean(s0)``,
    zero-points by ~``5 * lr`` codes."""
    groups = []
    for q in quantizers:
        groups.append({'params': [q.scale], 'lr': lr * float(q.scale.detach().abs().mean())})
        groups.append({'params': [q.zero_point], 'lr': 5.0 * lr})
    return groups


def record_step(history: Dict[str, list], step: int, terms: Dict[str, torch.Tensor],
                progress: Optional[Callable] = None, stage: str = 'stage 1', total: int = 0) -> None:
    """Append one step's loss terms to ``history`` and report them to ``progress``
    (``progress(stage, step, total, {'total': loss})``)."""
    values = {k: float(v.detach()) for k, v in terms.items()}
    if progress:
        progress(stage, step, max(total, step), {'loss': values['total']} if 'total' in values else {})
    for k, v in values.items():
        history.setdefault(k, []).append(v)


def step_size_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the stage-1 step size at ``step`` (0-based) of ``total``: 1 throughout
    ('constant') or a half cosine from 1 at the first step towards 0 after the last ('cosine').

    Why cosine: with a constant step the quantizers' scales keep moving by about ``lr`` per
    step on the noise of small batches and straight-through gradients, so the loss after the
    run depends on where the last few steps happened to leave them (it rose on some seeds and
    CPU kinds); decaying the step makes the last steps settle (docs/method.md)."""
    if schedule == 'constant' or total <= 1:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / total))


def stage1(qm, inputs: List[torch.Tensor], cfg: CalibConfig,
           progress: Optional[Callable] = None, budget: Optional[Budget] = None) -> Dict[str, list]:
    """Calibrate activation quantizers in place; returns the per-step loss history. With a
    ``budget``, the planned steps are cut, after two measured steps, to those that fit in
    half of it (the step size schedule then runs over the steps that are taken;
    ``history['budget']`` says planned and taken)."""
    init_quantizers(qm, inputs[:cfg.init_crops], cfg.init, cfg.batch)
    history: Dict[str, list] = {}
    if cfg.stage1 is None:
        return history
    grid = (inputs[0].shape[2] // 14, inputs[0].shape[3] // 14)
    loss_fn = GPLQLoss(cfg.loss)
    quantizers = list(qm.quantizers.values())
    opt = torch.optim.Adam(quantizer_param_groups(quantizers, cfg.lr))
    base_lr = [g['lr'] for g in opt.param_groups]
    total_steps = cfg.stage1.epochs * math.ceil(len(inputs) / cfg.batch)
    rng = np.random.default_rng(cfg.seed)
    if cfg.loss.pca_final:
        with torch.no_grad(), qm.modes(act=False):
            fp = qm.block_tokens(torch.cat(inputs[:cfg.init_crops]).to(model_device(qm)))
        history['pca_components'] = [loss_fn.fit_pca(fp[-1])]
    step = 0
    planned = total_steps
    t0 = time.perf_counter()
    with _learning(quantizers), qm.modes(act=True, weight=False):
        for _ in range(cfg.stage1.epochs):
            for x in batches_of(inputs, cfg.batch, rng.permutation(len(inputs)), model_device(qm)):
                if step >= total_steps:
                    break
                if budget is not None and step == 2:
                    total_steps = budget.fit(planned, (time.perf_counter() - t0) / 2, share=0.5, minimum=2)
                    if total_steps < planned and progress:
                        progress('stage 1', step, total_steps,
                                 {'note': f'budget_s={budget.seconds:g}: {total_steps} of {planned} steps fit'})
                with torch.no_grad(), qm.modes(act=False):
                    fp = [as_grid(t, grid) for t in qm.block_tokens(x)]
                for q in quantizers:
                    q.track_error = cfg.loss.lambda_reg > 0
                out = [as_grid(t, grid) for t in qm.block_tokens(x)]
                for q in quantizers:  # block recomputation in backward must not track again
                    q.track_error = False
                errors = [q.last_error for q in quantizers if q.last_error is not None]
                terms = loss_fn(fp, out, errors)
                opt.zero_grad(set_to_none=True)
                terms['total'].backward()
                if errors:  # L_reg: each quantizer's local gradient, weighted as in the loss
                    w = cfg.loss.lambda_reg / len(errors)
                    for q in quantizers:
                        gs, gz = q.error_grads
                        q.scale.grad = q.scale.grad + w * gs if q.scale.grad is not None else w * gs
                        q.zero_point.grad = q.zero_point.grad + w * gz if q.zero_point.grad is not None else w * gz
                        q.last_error, q.error_grads = None, None
                f = step_size_factor(cfg.stage1.lr_schedule, step, total_steps)
                for g, lr in zip(opt.param_groups, base_lr):
                    g['lr'] = lr * f
                opt.step()
                step += 1
                record_step(history, step, terms, progress, 'stage 1', total_steps)
    history['wall_s'] = [time.perf_counter() - t0]
    if budget is not None:
        history['budget'] = [planned, step]
    return history
