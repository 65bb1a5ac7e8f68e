"""Closed-form compensation of the quantization error, block by block (after QwT,
"Quantization without Tears"): each block's output gets a linear correction of its own
(quantized) input, ``y + x A B + c``, fitted by ridge regression so that the quantized
model's block outputs match the FP32 model's on the calibration crops. Blocks are fitted in
order, each on the inputs the already compensated earlier blocks produce, so a block also
corrects error that reaches it from upstream. ``rank`` < C keeps A B low-rank (truncated
SVD of the ridge solution): C x r + r x C weights per block instead of C x C.
"""
from typing import Dict, List, Sequence

import torch


def _block_inputs(qm, xs: Sequence[torch.Tensor], upto: int) -> List[torch.Tensor]:
    out = []
    for x in xs:
        t = qm.extractor.embed(x)
        for blk in qm.extractor.vit.blocks[:upto]:
            t = blk(t)
        out.append(t)
    return out


@torch.no_grad()
def fit_compensation(qm, xs: Sequence[torch.Tensor], rank: int = 32, ridge: float = 1e-2) -> Dict[str, list]:
    """Sets ``qm.compensation`` for every block; returns per block the relative output error
    (||y_fp - y_q|| / ||y_fp||) on the crops before and after its compensation."""
    blocks = qm.extractor.vit.blocks
    with qm.modes(act=False, weight=False, comp=False):
        fp_in = _block_inputs(qm, xs, 0)
        targets = []
        for i, blk in enumerate(blocks):
            fp_in = [blk(t) for t in fp_in]
            targets.append([t.reshape(-1, t.shape[-1]).double() for t in fp_in])
    qm.compensation.clear()
    report = {'before': [], 'after': []}
    with qm.modes(act=True, weight=True, comp=True):
        t_q = _block_inputs(qm, xs, 0)
        for i, blk in enumerate(blocks):
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in t_q]).double()
            y = torch.cat([blk(t).reshape(-1, t.shape[-1]) for t in t_q]).double()   # no compensation set yet
            target = torch.cat(targets[i])
            r = target - y
            xm, rm = x.mean(0), r.mean(0)
            xc = x - xm
            g = xc.T @ xc
            g += ridge * torch.trace(g) / g.shape[0] * torch.eye(g.shape[0], dtype=g.dtype)
            w = torch.linalg.solve(g, xc.T @ (r - rm))                           # (C, C)
            u, s, vh = torch.linalg.svd(w)
            k = min(rank, w.shape[0])
            a, b = (u[:, :k] * s[:k]).float(), vh[:k].float()
            bias = (rm - xm @ (a.double() @ b.double())).float()
            qm.compensation[i] = (a, b, bias)
            after = y + (x @ a.double()) @ b.double() + bias.double()
            den = float(target.norm())
            report['before'].append(float(r.norm()) / den)
            report['after'].append(float((target - after).norm()) / den)
            t_q = [blk(t) for t in t_q]                                           # now with compensation
    return report
