"""Mixed precision from measured sensitivity: which block Linears keep 8-bit weights.

``layer_sensitivity``: for each quantized Linear, 1 - final-token cosine to FP32 on the
calibration crops when only that Linear uses its 4-bit weights (activations quantized as
calibrated; with ``keys``: the mean cosine of those outputs, e.g. the heads' tokens and the
place descriptor's VLAD features, ``MixedPrecisionConfig.objective``). ``choose_8bit``: the
most sensitive layers per weight, greedily, while the 8-bit layers hold at most
``max_8bit_fraction`` of the Linear weights; with ``target_cosine`` it stops as soon as
the whole model (those layers at 8 bits, the rest at 4) reaches that cosine on the
calibration crops. Deterministic for given crops.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch


def _outputs(qm, x: torch.Tensor, keys) -> list:
    """The outputs the cosine is measured on: the final block's tokens (``keys`` None), or
    the extractor's (block, facet) features, e.g. the heads' tokens and the VLAD features."""
    if keys is None:
        return [qm.block_tokens(x)[-1]]
    out = qm(x, keys)
    return [out[k] for k in keys]


def _final_cosine(qm, xs: Sequence[torch.Tensor], refs: Sequence[list], keys=None) -> float:
    cos = [torch.nn.functional.cosine_similarity(o, r, dim=-1).mean()
           for x, ref in zip(xs, refs) for o, r in zip(_outputs(qm, x, keys), ref)]
    return float(torch.stack(cos).mean())


@torch.no_grad()
def layer_sensitivity(qm, xs: Sequence[torch.Tensor], progress=None, keys=None) -> Dict[str, float]:
    """``qm`` with quantized weights (after stage 2); ``xs``: batches of calibration crops;
    ``keys``: (block, facet) outputs whose mean cosine to FP32 is measured (None: the final
    block's tokens)."""
    with qm.modes(act=False, weight=False):
        refs = [_outputs(qm, x, keys) for x in xs]
    out = {}
    with qm.modes(act=True, weight=False):
        base = _final_cosine(qm, xs, refs, keys)
        for i, (name, lin) in enumerate(qm.linears.items()):
            if lin.weight_q is None:
                continue
            lin.weight_enabled = True
            out[name] = max(0.0, base - _final_cosine(qm, xs, refs, keys))
            lin.weight_enabled = False
            if progress:
                progress('layer sensitivity', i + 1, len(qm.linears), {})
    return out


@torch.no_grad()
def choose_8bit(qm, xs: Sequence[torch.Tensor], sensitivity: Dict[str, float], max_8bit_fraction: float,
                target_cosine: Optional[float], requantize: Callable[[str, int], None],
                keys=None, progress=None) -> Tuple[List[str], list]:
    """Layers to keep at 8 bits and the curve [(8-bit weight fraction, final cosine)]; the
    chosen layers are re-quantized at 8 bits with ``requantize(name, bits)``."""
    sizes = {n: qm.linears[n].weight.numel() for n in sensitivity}
    total = sum(lin.weight.numel() for lin in qm.linears.values())
    order = sorted(sensitivity, key=lambda n: (-sensitivity[n] / sizes[n], n))
    with qm.modes(act=False, weight=False):
        refs = [_outputs(qm, x, keys) for x in xs]
    chosen, used, curve = [], 0, []
    with qm.modes(act=True, weight=True):
        curve.append((0.0, _final_cosine(qm, xs, refs, keys)))
        for i, name in enumerate(order):
            if progress:
                progress('8-bit choice', i, len(order), {})
            if target_cosine is not None and curve[-1][1] >= target_cosine:
                break
            if (used + sizes[name]) / total > max_8bit_fraction:
                continue
            requantize(name, 8)
            chosen.append(name)
            used += sizes[name]
            curve.append((used / total, _final_cosine(qm, xs, refs, keys)))
    if progress:
        progress('8-bit choice', len(order), len(order), {'layers': len(chosen)})
    return chosen, curve
