"""ONNX export of the DINOv2 extractor (offline side; imports torch).

The graph has a fixed input size (a drone camera has one): ``pixels`` float32
(1, 3, h, w), ImageNet-normalized as ``onboard.preprocess.prepare`` makes it, and two
outputs: ``tokens`` (1, gh*gw, 384), the feature block's tokens for the boundary and
corner heads, and ``vlad_features`` (1, gh*gw, 384) for the place descriptor. The heads
run in numpy after the graph (``onboard.pipeline.run_heads``), identical to the FP32
reference. The ONNX metadata key ``gplq_ros`` (JSON) records kind, input size, pipeline
config, backbone and weights sha256.

Every pass below works on an in-memory ``onnx.ModelProto``; ``export_onnx`` and
``export_artifact`` write the file once, atomically, at the end.
"""
import collections
import io
import json
import warnings
from pathlib import Path
from typing import Tuple

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from gplq_ros.offline.fakequant import fakequant_from_tensors
from gplq_ros.onboard.artifact import PACKED_PREFIX, layer_codes, load_artifact
from gplq_ros.onboard.engine import GRAPH_FORMAT, GRAPH_VERSION
from gplq_ros.onboard.fileformat import BACKBONE_ID
from gplq_ros.onboard.pipeline import PipelineConfig
from gplq_ros.onboard.preprocess import PATCH


class _Graph(torch.nn.Module):
    def __init__(self, extractor, cfg: PipelineConfig):
        super().__init__()
        self.extractor, self.keys = extractor, cfg.keys

    def forward(self, pixels):
        out = self.extractor(pixels, self.keys)
        return out[self.keys[0]], out[self.keys[1]]


def trace_onnx(extractor, input_hw: Tuple[int, int], cfg: PipelineConfig = PipelineConfig(),
               kind: str = 'fp32', extra_meta: dict = None) -> onnx.ModelProto:
    """The extractor as an ONNX model (in memory) with the ``gplq_ros`` metadata."""
    h, w = input_hw
    if h % PATCH or w % PATCH or h <= 0 or w <= 0:
        raise ValueError(f'input_hw={input_hw}: both sides must be positive multiples of {PATCH}')
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the trace is for one fixed input size on purpose: size-to-int conversions are expected
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        torch.onnx.export(_Graph(extractor.eval(), cfg), (torch.zeros(1, 3, h, w),), buf, dynamo=False,
                          opset_version=17, input_names=['pixels'], output_names=['tokens', 'vlad_features'])
    model = onnx.load_from_string(buf.getvalue())
    meta = {'format': GRAPH_FORMAT, 'version': GRAPH_VERSION, 'kind': kind, 'input_hw': [h, w],
            'pipeline': cfg.__dict__, 'backbone': BACKBONE_ID, 'weights_sha256': extractor.weights_sha256,
            **(extra_meta or {})}
    model.metadata_props.add(key='gplq_ros', value=json.dumps(meta, sort_keys=True))
    return model


def save_model(model: onnx.ModelProto, path: Path, force: bool = False) -> Path:
    """Write atomically; refuses to overwrite unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f'{path} exists; pass --force to overwrite it')
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def export_onnx(extractor, path: Path, input_hw: Tuple[int, int], cfg: PipelineConfig = PipelineConfig(),
                kind: str = 'fp32', force: bool = False, extra_meta: dict = None) -> Path:
    if Path(path).exists() and not force:
        raise FileExistsError(f'{path} exists; pass --force to overwrite it')
    return save_model(trace_onnx(extractor, input_hw, cfg, kind, extra_meta), path, force)


def integer_weights(model: onnx.ModelProto, tensors: dict, layers: dict) -> int:
    """Replace the float weights of per-output-channel layers by int8 codes + a per-channel
    DequantizeLinear, so ONNX Runtime can run DQ(act) x DQ(weight) MatMuls on integer
    kernels. Each MatMul weight initializer is matched to its artifact layer by value
    (the exporter stores exactly the dequantized grid values, transposed). Per-group
    layers stay float (int8 kernels have one scale per column). Returns how many changed."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == 'Constant'}  # the exporter folds W^T here
    candidates = {}
    for name, info in layers.items():
        if info['group_size'] not in (None, info['shape'][1]):
            continue
        codes = layer_codes(tensors, name, info['shape'])
        scales = tensors[f'w/{name}.scales'].reshape(-1)
        candidates[name] = (codes.T.copy(), scales)  # (in, out) as in the MatMul
    changed = 0
    for node in list(g.node):
        if node.op_type != 'MatMul' or (node.input[1] not in inits and node.input[1] not in consts):
            continue
        base = node.input[1]
        src = inits.get(base)
        w = numpy_helper.to_array(src if src is not None else consts[base].attribute[0].t)
        for name, (codes, scales) in list(candidates.items()):
            if codes.shape != w.shape or not np.array_equal(codes.astype(np.float32) * scales[None, :], w):
                continue
            if src is not None:
                g.initializer.remove(src)
            else:
                g.node.remove(consts[base])
            g.initializer.extend([numpy_helper.from_array(codes.astype(np.int8), PACKED_PREFIX + name),
                                  numpy_helper.from_array(scales.astype(np.float32), base + '_scale'),
                                  numpy_helper.from_array(np.zeros(len(scales), np.int8), base + '_zp')])
            g.node.insert(list(g.node).index(node), helper.make_node(
                'DequantizeLinear', [PACKED_PREFIX + name, base + '_scale', base + '_zp'], [base], axis=1,
                name=base + '_DequantizeLinear'))
            del candidates[name]
            changed += 1
            break
    return changed


def fuse_integer_linears(model: onnx.ModelProto) -> Tuple[int, int]:
    """ONNX Runtime-specific rewrite of the int8-weight Linears written by ``integer_weights``:
    ``DQ(Q(x)) @ DQ(W_int8) + b`` becomes one ``com.microsoft.MatMulIntegerToFloat`` with the
    bias folded in, and a following LayerScale ``Mul(gamma)`` is folded into its weight
    scales and bias (``gamma * (s_a s_w acc + b) = s_a (gamma s_w) acc + gamma b``).
    ORT does neither fusion on its own here. Returns (linears fused, LayerScales folded)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == 'Constant'}
    prod = {o: n for n in g.node for o in n.output}
    cons = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            cons[i].append(n)

    def const(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        return numpy_helper.to_array(consts[name].attribute[0].t) if name in consts else None

    def only_user(name, op):
        users = cons[name]
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    drop, replace, fused, folded = set(), {}, 0, 0
    for n in g.node:
        if n.op_type != 'MatMul':
            continue
        da, dw = prod.get(n.input[0]), prod.get(n.input[1])
        if not (da is not None and dw is not None and da.op_type == dw.op_type == 'DequantizeLinear'
                and dw.input[0] in inits and len(da.input) == 3 and len(dw.input) == 3):
            continue
        add = only_user(n.output[0], 'Add')
        bias = const([i for i in add.input if i != n.output[0]][0]) if add is not None else None
        if bias is None or bias.ndim != 1:
            continue
        w_scale = numpy_helper.to_array(inits[dw.input[1]]).astype(np.float32)
        out = add.output[0]
        mul = only_user(out, 'Mul')
        gamma = const([i for i in mul.input if i != out][0]) if mul is not None else None
        if gamma is not None and gamma.shape == bias.shape:
            w_scale, bias, out = w_scale * gamma, bias * gamma, mul.output[0]
            drop.add(id(mul))
            folded += 1
        base = n.name.replace('/', '_').strip('_')
        g.initializer.extend([numpy_helper.from_array(w_scale.astype(np.float32), base + '_wscale'),
                              numpy_helper.from_array(bias.astype(np.float32), base + '_bias')])
        replace[id(n)] = helper.make_node(
            'MatMulIntegerToFloat', [da.input[0], dw.input[0], da.input[1], base + '_wscale', da.input[2],
                                     dw.input[2], base + '_bias'], [out], domain='com.microsoft',
            name=n.name + '_int8')
        drop.update({id(add), id(dw)})
        if len(cons[n.input[0]]) == 1:
            drop.add(id(da))
        fused += 1
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    if fused and not any(o.domain == 'com.microsoft' for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid('com.microsoft', 1))
    return fused, folded


def _set_meta(model, **changes) -> dict:
    prop = next(p for p in model.metadata_props if p.key == 'gplq_ros')
    meta = dict(json.loads(prop.value), **changes)
    prop.value = json.dumps(meta, sort_keys=True)
    return meta


def strip_packed_weights(model: onnx.ModelProto, artifact_path: Path) -> int:
    """Drop the int8 code initializers that ``integer_weights`` made: the onboard engine
    fills them at load from the artifact's packed 4-bit codes (``onboard.engine``), so the
    4-bit weights exist once on disk. The graph records the artifact's file name and
    checksum. Returns how many were dropped."""
    g = model.graph
    packed = [t for t in g.initializer if t.name.startswith(PACKED_PREFIX)]
    for t in packed:
        g.initializer.remove(t)
    _set_meta(model, packed_layers=sorted(t.name[len(PACKED_PREFIX):] for t in packed),
              artifact_file=Path(artifact_path).name)
    return len(packed)


def export_artifact(artifact_path: Path, path: Path, input_hw: Tuple[int, int],
                    cfg: PipelineConfig = PipelineConfig(), packed: bool = True, force: bool = False,
                    expect_weights_sha256: str = None) -> dict:
    """The whole GPLQ export: fake-quant model of the artifact -> Q/DQ graph -> int8 codes for
    per-output-channel layers -> fused integer Linears -> (``packed``) codes left in the
    artifact. Returns counts for the caller to report."""
    if Path(path).exists() and not force:
        raise FileExistsError(f'{path} exists; pass --force to overwrite it')
    tensors, meta = load_artifact(artifact_path, BACKBONE_ID, expect_weights_sha256)
    qm = fakequant_from_tensors(tensors, meta, artifact_path)
    for q in qm.quantizers.values():
        q.freeze()
    model = trace_onnx(qm.extractor, input_hw, cfg, kind='gplq',
                       extra_meta={'artifact_checksum': meta['checksum'], 'tag': meta['tag']})
    n_int8 = integer_weights(model, tensors, meta['layers'])
    fused, folded = fuse_integer_linears(model)
    stripped = strip_packed_weights(model, artifact_path) if packed else 0
    path = save_model(model, path, force)
    return {'path': path, 'layers': len(meta['layers']), 'int8': n_int8, 'fused': fused, 'folded': folded,
            'packed': stripped, 'tag': meta['tag'], 'group_size': meta['spec']['group_size']}
