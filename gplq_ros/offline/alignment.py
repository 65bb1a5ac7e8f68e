"""Gradient alignment of the quantized model (torch).

cos(grad_theta L_fp, grad_theta L_q) per Linear weight and overall for the label-free
surrogate L = 1 - mean_patches cos(f_theta(x'), t(x)): cross-view consistency between the
final tokens of a photometrically augmented view x' (contrast x0.7, brightness +0.3 in
normalized units, horizontal flip undone on the token grid) and the fixed FP32 tokens t(x)
of the original view. The quantized gradient reaches the FP32 weights through the
straight-through weight quantizer. The model's quantizer switches are restored on exit.
"""
from typing import Dict, Sequence

import torch


def gradient_alignment(qm, inputs: Sequence, batch: int = 4, batches: int = 2) -> Dict[str, object]:
    gh, gw = inputs[0].shape[2] // 14, inputs[0].shape[3] // 14
    dev = next(qm.parameters()).device
    xs = [torch.cat(list(inputs[i * batch:(i + 1) * batch])).to(dev) for i in range(batches)]
    with torch.no_grad(), qm.modes(act=False, weight=False):
        targets = [qm.block_tokens(x)[-1] for x in xs]

    def surrogate(x, target):
        view = torch.flip(x * 0.7 + 0.3, dims=[3])
        b = qm.block_tokens(view)[-1]
        b = torch.flip(b.reshape(b.shape[0], gh, gw, -1), dims=[2]).reshape_as(target)
        return 1 - torch.nn.functional.cosine_similarity(b, target, dim=-1).mean()

    weights = {n: lin.weight for n, lin in qm.linears.items()}
    grads = {}
    for mode in ('fp', 'q'):
        with qm.modes(act=mode == 'q', weight=mode == 'q'):
            for w in weights.values():
                w.requires_grad_(True)
                w.grad = None
            try:
                for x, t in zip(xs, targets):
                    surrogate(x, t).backward()
                grads[mode] = {n: w.grad.detach().clone() for n, w in weights.items()}
            finally:
                for w in weights.values():
                    w.requires_grad_(False)
                    w.grad = None
    per = {}
    for n in weights:
        g1, g2 = grads['fp'][n].flatten(), grads['q'][n].flatten()
        per[n] = float(torch.nn.functional.cosine_similarity(g1, g2, dim=0))
    g1 = torch.cat([grads['fp'][n].flatten() for n in weights])
    g2 = torch.cat([grads['q'][n].flatten() for n in weights])
    return {'per_layer': per, 'overall': float(torch.nn.functional.cosine_similarity(g1, g2, dim=0)),
            'surrogate': 'cross-view consistency: photometric jitter + flip vs FP32 tokens'}
