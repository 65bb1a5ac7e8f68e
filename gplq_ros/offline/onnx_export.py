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
from gplq_ros.onboard.artifact import PACKED_PREFIX, layer_int8, load_artifact
from gplq_ros.onboard.engine import GRAPH_FORMAT, GRAPH_VERSION
from gplq_ros.onboard.fileformat import BACKBONE_ID
from gplq_ros.onboard.graph_rewrite import GraphIndex, add_ms_domain, integer_attention_scores, prune, replace_nodes
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
        codes = layer_int8(tensors, name, info)      # int8 values on every 4-bit grid
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
    scales and bias (``gamma * (s_a s_w acc + b) = s_a (gamma s_w) acc + gamma b``; an
    all-ones gamma, as rotated artifacts have, so drops an exact no-op Mul).
    ORT does neither fusion on its own here. Returns (linears fused, LayerScales folded)."""
    g = model.graph
    ix = GraphIndex(g)
    inits, prod, cons, const, only_user = ix.inits, ix.prod, ix.cons, ix.const, ix.only_user
    gone, pairs, fused, folded = [], [], 0, 0
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
            gone.append(mul)
            folded += 1
        base = n.name.replace('/', '_').strip('_')
        g.initializer.extend([numpy_helper.from_array(w_scale.astype(np.float32), base + '_wscale'),
                              numpy_helper.from_array(bias.astype(np.float32), base + '_bias')])
        pairs.append((n, [helper.make_node(
            'MatMulIntegerToFloat', [da.input[0], dw.input[0], da.input[1], base + '_wscale', da.input[2],
                                     dw.input[2], base + '_bias'], [out], domain='com.microsoft',
            name=n.name + '_int8')]))
        gone += [add, dw]
        if len(cons[n.input[0]]) == 1:
            gone.append(da)
        fused += 1
    replace_nodes(g, pairs, gone)
    prune(model)
    if fused:
        add_ms_domain(model)
    return fused, folded


def split_qkv(model: onnx.ModelProto) -> int:
    """An attention's fused ``MatMulIntegerToFloat`` qkv Linear (``fuse_integer_linears``) whose
    output is reshaped to (b, n, 3, heads, d), transposed to (3, b, heads, n, d), split and squeezed
    becomes three ``MatMulIntegerToFloat`` (q, k, v; their int8 weights a constant ``Split`` of
    the one qkv weight, so a packed graph still takes it from the artifact), each reshaped and
    transposed to (b, heads, n, d): no strided 5-D copy (ONNX Runtime: its Split; OpenVINO: a
    float Transpose per block, 3 ms of 25 at 168x224). The same values. A last-axis ``Slice`` of
    one part (the value features) reads that part; other readers of the qkv output get the
    three concatenated. Returns how many."""
    g = model.graph
    ix = GraphIndex(g)

    def attr(n, name, default=None):
        return next((helper.get_attribute_value(a) for a in n.attribute if a.name == name), default)

    done, remove, rewire = [], [], {}
    outputs = {o.name for o in g.output}
    for m in g.node:
        if m.op_type != 'MatMulIntegerToFloat' or len(m.input) != 7 or m.input[1] not in ix.inits:
            continue
        y = m.output[0]
        resh = [u for u in ix.cons[y] if u.op_type == 'Reshape']
        shape = ix.const(resh[0].input[1]) if len(resh) == 1 else None
        w_scale, w_zp, bias = (ix.const(m.input[i]) for i in (3, 5, 6))
        if shape is None or len(shape) != 5 or shape[2] != 3 or any(v is None for v in (w_scale, w_zp, bias)):
            continue
        b, n, _, heads, d = (int(v) for v in shape)
        cols = int(ix.inits[m.input[1]].dims[1])
        t = ix.only_user(resh[0].output[0], 'Transpose')
        perm_ok = t is not None and list(attr(t, 'perm', [])) == [2, 0, 3, 1, 4]
        sp = ix.only_user(t.output[0], 'Split') if perm_ok else None
        if sp is None or attr(sp, 'axis', 0) != 0 or len(sp.output) != 3 or 3 * heads * d != cols \
                or w_scale.shape != (cols,) or w_zp.shape != (cols,) or bias.shape != (cols,) or min(b, n) < 1:
            continue
        if len(sp.input) > 1 and not np.array_equal(ix.const(sp.input[1]), [1, 1, 1]):
            continue
        sq = [ix.only_user(o, 'Squeeze') for o in sp.output]
        axes = [ix.const(q.input[1]) if q is not None and len(q.input) == 2 else None for q in sq]
        if any(a is None or a.reshape(-1).tolist() != [0] for a in axes):
            continue
        base = m.name.replace('/', '_').strip('_')
        hd = heads * d
        g.initializer.extend([numpy_helper.from_array(np.array([hd] * 3, np.int64), base + '_split'),
                              numpy_helper.from_array(np.array([b, n, heads, d], np.int64), base + '_heads')])
        nodes = [helper.make_node('Split', [m.input[1], base + '_split'], [f'{base}_w{i}' for i in 'qkv'],
                                  axis=1, name=base + '_split_w')]
        for j, (part, q) in enumerate(zip('qkv', sq)):
            sl = slice(j * hd, (j + 1) * hd)
            g.initializer.extend([numpy_helper.from_array(w_scale[sl].astype(np.float32), f'{base}_wscale_{part}'),
                                  numpy_helper.from_array(w_zp[sl], f'{base}_wzp_{part}'),
                                  numpy_helper.from_array(bias[sl].astype(np.float32), f'{base}_bias_{part}')])
            inputs = [m.input[0], f'{base}_w{part}', m.input[2], f'{base}_wscale_{part}', m.input[4],
                      f'{base}_wzp_{part}', f'{base}_bias_{part}']
            nodes += [helper.make_node('MatMulIntegerToFloat', inputs, [f'{base}_{part}'],
                                       domain='com.microsoft', name=f'{m.name}_{part}'),
                      helper.make_node('Reshape', [f'{base}_{part}', base + '_heads'], [f'{base}_{part}_heads'],
                                       name=f'{base}_reshape_{part}'),
                      helper.make_node('Transpose', [f'{base}_{part}_heads'], list(q.output), perm=[0, 2, 1, 3],
                                       name=f'{base}_transpose_{part}')]
            remove.append(q)
        others = [u for u in ix.cons[y] if u is not resh[0]]
        for u in others:          # a last-axis Slice of one of q, k, v (the value features) reads that part
            if u.op_type == 'Shape' and not u.attribute and u.output[0] not in outputs:
                if base + '_shape' not in rewire.values():
                    g.initializer.append(numpy_helper.from_array(np.array([b, n, 3 * hd], np.int64), base + '_shape'))
                rewire[u.output[0]] = base + '_shape'      # a static shape
                continue
            j = _slice_part(ix, u, y, (b, n, 3 * hd), hd)
            if j is None or u.output[0] in outputs:
                break
            rewire[u.output[0]] = f'{base}_{"qkv"[j]}'
        else:
            others = []
        if others:                # read some other way: the three parts concatenated
            nodes.append(helper.make_node('Concat', [f'{base}_{p}' for p in 'qkv'], [y], axis=-1,
                                          name=base + '_concat'))
        done.append((m, nodes))
    replace_nodes(g, done, remove)
    for n in g.node:
        for i, name in enumerate(n.input):
            if name in rewire:
                n.input[i] = rewire[name]
    prune(model)
    return len(done)


def _int_value(ix: GraphIndex, name: str, known: dict):
    """The value of a small integer tensor computed from constants and ``Shape`` of tensors of
    ``known`` shape ({name: shape}), as torch.onnx writes slice bounds; None if it is not one."""
    v = ix.const(name)
    if v is not None:
        return v
    p = ix.prod.get(name)
    if p is None:
        return None
    if p.op_type == 'Shape':
        ok = p.input[0] in known and not p.attribute
        return np.array(known[p.input[0]], np.int64) if ok else None
    args = [_int_value(ix, i, known) for i in p.input]
    if any(a is None for a in args):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in p.attribute}
    if p.op_type == 'Gather':
        return np.take(args[0], args[1], axis=attrs.get('axis', 0))
    if p.op_type in ('Add', 'Sub', 'Mul'):
        return {'Add': np.add, 'Sub': np.subtract, 'Mul': np.multiply}[p.op_type](args[0], args[1])
    if p.op_type == 'Div' and args[0].dtype.kind == 'i':        # integer division truncates
        return np.sign(args[0]) * np.sign(args[1]) * (np.abs(args[0]) // np.abs(args[1]))
    if p.op_type in ('Cast', 'Identity'):
        return args[0]
    if p.op_type == 'Unsqueeze' and len(args) == 2:
        return np.expand_dims(args[0], tuple(int(a) for a in args[1]))
    if p.op_type == 'Concat':
        return np.concatenate([np.atleast_1d(a) for a in args], axis=attrs.get('axis', 0))
    return None


def _slice_part(ix: GraphIndex, node, data: str, shape, width: int):
    """j when ``node`` is ``Slice(data)`` of columns [j * width, (j + 1) * width) of its last
    axis (``data`` of shape ``shape``), else None."""
    if node.op_type != 'Slice' or node.input[0] != data or len(node.input) < 4:
        return None
    known = {data: shape}
    starts, ends, axes = (_int_value(ix, i, known) for i in node.input[1:4])
    steps = _int_value(ix, node.input[4], known) if len(node.input) > 4 else np.ones(1, np.int64)
    if any(v is None or np.size(v) != 1 for v in (starts, ends, axes, steps)):
        return None
    starts, ends, axes, steps = (int(np.ravel(v)[0]) for v in (starts, ends, axes, steps))
    if steps != 1 or axes not in (-1, len(shape) - 1):
        return None
    j, r = divmod(starts, width)
    return j if r == 0 and 0 <= starts and min(ends, shape[-1]) == (j + 1) * width else None


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
                    expect_weights_sha256: str = None, for_onnxruntime: bool = False) -> dict:
    """The whole GPLQ export: fake-quant model of the artifact -> Q/DQ graph -> int8 codes for
    per-output-channel layers -> fused integer Linears -> split qkv Linears -> (``for_onnxruntime``:
    ``integer_attention_scores``, recorded as ``rewrites='onnxruntime'`` in the metadata; OpenVINO
    runs such a graph slower) -> (``packed``) codes left in the artifact. Returns counts for the
    caller to report."""
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
    split = split_qkv(model)
    attention = integer_attention_scores(model) if for_onnxruntime else 0
    if for_onnxruntime:
        _set_meta(model, rewrites='onnxruntime')
    stripped = strip_packed_weights(model, artifact_path) if packed else 0
    path = save_model(model, path, force)
    return {'path': path, 'layers': len(meta['layers']), 'int8': n_int8, 'fused': fused, 'folded': folded,
            'split_qkv': split, 'attention': attention, 'packed': stripped, 'tag': meta['tag'],
            'group_size': meta['spec']['group_size']}
