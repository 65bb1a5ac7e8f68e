"""Torch fake-quant model <-> artifact tensors (the offline side; imports torch).

``export_tensors(qm)`` turns a calibrated ``QuantDinoV2`` into artifact tensors and
layer metadata; ``fakequant_model(path)`` rebuilds a ``QuantDinoV2`` from an artifact that
computes exactly what the calibrated model computed (same codes, scales, qparams).
"""
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch

from gplq_ros.offline.backbone import DinoV2Extractor, build_vit, load_strict
from gplq_ros.offline.grids import Grid
from gplq_ros.offline.quantized import QuantDinoV2
from gplq_ros.onboard.fileformat import BACKBONE_ID
from gplq_ros.onboard.packing import pack_int4, pack_uint4
from gplq_ros.offline.spec import QuantSpec
from gplq_ros.onboard.artifact import ArtifactError, layer_codes, layer_grid, load_artifact


def _fp_state(qm: QuantDinoV2) -> Dict[str, torch.Tensor]:
    quantized = {f'{n}.weight' for n, lin in qm.linears.items() if lin.weight_q is not None}
    return {k: v for k, v in qm.extractor.vit.state_dict().items()
            if '_quant.' not in k and 'in_quant.' not in k and k not in quantized}


def export_tensors(qm: QuantDinoV2) -> Tuple[Dict[str, np.ndarray], dict]:
    tensors = {f'fp/{k}': v.detach().float().cpu().numpy() for k, v in _fp_state(qm).items()}
    for name, lin in qm.linears.items():   # bias correction (weight_ptq.correct_biases) folded into the bias
        if lin.weight_q is not None and lin.bias_delta is not None:
            tensors[f'fp/{name}.bias'] = (lin.bias + lin.bias_delta).detach().float().cpu().numpy()
    if qm.extractor.rotation is not None:  # the fp/ tensors are the rotated ones (offline.rotation)
        tensors['r/rotation'] = qm.extractor.rotation.float().cpu().numpy()
    layers = {}
    for name, lin in qm.linears.items():
        if lin.weight_q is None:
            continue
        codes = lin.codes.cpu().numpy()
        if lin.bits <= 4:
            tensors[f'w/{name}.int4'] = pack_int4(codes)
        else:
            tensors[f'w/{name}.int8'] = codes.astype(np.int8)
        tensors[f'w/{name}.scales'] = lin.scales.detach().float().cpu().numpy()
        layers[name] = {'bits': lin.bits, 'group_size': lin.group_size, 'shape': list(codes.shape)}
        if lin.grid is not None and lin.grid.kind == 'multiplier':
            tensors[f'w/{name}.mult'] = pack_uint4(lin.grid.mult.cpu().numpy())
            layers[name].update(grid='multiplier', grid_group=lin.grid.group)
        elif lin.grid is not None:
            tensors[f'w/{name}.codebook'] = lin.grid.levels.cpu().numpy().astype(np.int8)
            layers[name].update(grid='codebook')
    acts = {}
    for key, q in qm.quantizers.items():
        s, z = q.qparams()
        tensors[f'a/{q.name}.scale'] = s.float().cpu().numpy()
        tensors[f'a/{q.name}.zero_point'] = z.float().cpu().numpy()
        acts[q.name] = {'bits': q.bits, 'granularity': 'channel' if q.per_channel else 'tensor',
                        'symmetric': q.symmetric}
    comp = {}
    for i, (a, b, bias) in sorted(qm.compensation.items()):
        for part, t in (('a', a), ('b', b), ('bias', bias)):
            tensors[f'c/blocks.{i}.{part}'] = t.detach().float().cpu().numpy()
        comp[str(i)] = {'rank': int(a.shape[1])}
    return tensors, {'layers': layers, 'activations': acts, 'compensation': comp}


def fakequant_model(path: Path, expect_weights_sha256: str = None) -> Tuple[QuantDinoV2, dict]:
    tensors, meta = load_artifact(path, BACKBONE_ID, expect_weights_sha256)
    return fakequant_from_tensors(tensors, meta, path), meta


def fakequant_from_tensors(tensors: Dict[str, np.ndarray], meta: dict, path: Path) -> QuantDinoV2:
    """The ``QuantDinoV2`` of already loaded (and checked) artifact tensors; ``path`` names
    the artifact in error messages."""
    vit = build_vit()
    fp = {k[3:]: torch.from_numpy(v.copy()) for k, v in tensors.items() if k.startswith('fp/')}
    # quantized layers' FP32 weights are not shipped: dequantized codes stand in for them
    for name, info in meta['layers'].items():
        fp[f'{name}.weight'] = torch.zeros(info['shape'])
    load_strict(vit, fp, path)
    spec = QuantSpec(**meta['spec'])
    rotation = None
    if spec.rotation != 'none':
        if 'r/rotation' not in tensors:
            raise ArtifactError(f'{path}: spec rotation={spec.rotation!r} but the tensor r/rotation is missing')
        rotation = torch.from_numpy(tensors['r/rotation'].copy())
        dim = vit.embed_dim
        if tuple(rotation.shape) != (dim, dim):
            raise ArtifactError(f'{path}: r/rotation has shape {tuple(rotation.shape)}; expected ({dim}, {dim})')
    qm = QuantDinoV2(DinoV2Extractor(vit.eval(), meta['weights_sha256'], rotation), spec)
    for name, info in meta['layers'].items():
        lin = qm.linears[name]
        codes = layer_codes(tensors, name, info['shape'])
        scales = torch.from_numpy(tensors[f'w/{name}.scales'].copy())
        grid = layer_grid(tensors, name, info)       # refuses grid tensors that do not fit the layer
        if grid is not None:
            kind, values, group = grid
            values = torch.from_numpy(values.astype(np.int16))
            grid = Grid(kind, mult=values, group=group) if kind == 'multiplier' else Grid(kind, levels=values)
        lin.set_quantized(torch.from_numpy(codes.copy()), scales, info['bits'], info['group_size'], grid)
        with torch.no_grad():
            lin.weight.copy_(lin.weight_q)
    for q in qm.quantizers.values():
        try:
            s, z = tensors[f'a/{q.name}.scale'], tensors[f'a/{q.name}.zero_point']
        except KeyError:
            raise ArtifactError(f'{path}: activation qparams of {q.name} missing') from None
        with torch.no_grad():
            q.scale.copy_(torch.from_numpy(s.copy()))
            q.zero_point.copy_(torch.from_numpy(z.copy()))
    dim = qm.extractor.dim
    for i, info in (meta.get('compensation') or {}).items():
        try:
            a, b, bias = (torch.from_numpy(tensors[f'c/blocks.{i}.{p}'].copy()) for p in ('a', 'b', 'bias'))
        except KeyError as e:
            raise ArtifactError(f'{path}: compensation tensor {e} of block {i} missing') from None
        r = info['rank']
        if tuple(a.shape) != (dim, r) or tuple(b.shape) != (r, dim) or tuple(bias.shape) != (dim,) \
                or not 0 <= int(i) < qm.extractor.depth:
            raise ArtifactError(f'{path}: compensation of block {i} has shapes {tuple(a.shape)}, {tuple(b.shape)}, '
                                f'{tuple(bias.shape)}; expected ({dim}, {r}), ({r}, {dim}), ({dim},) for a block '
                                f'of this {qm.extractor.depth}-block model')
        qm.compensation[int(i)] = (a, b, bias)
    qm.set_modes(act=True, weight=True, comp=True)
    return qm.eval()
