"""ONNX graph rewrites the onboard engine may apply at load (onnx + numpy, no torch).

``GraphIndex`` (producers, consumers, constants), ``prune``, ``replace_nodes`` and
``add_ms_domain`` are shared with the exporter's passes (``offline.onnx_export``).
``integer_attention_scores`` is ONNX Runtime's form of the int8 attention scores: the engine
applies it when it runs a GPLQ graph on ONNX Runtime (OpenVINO keeps the Q/DQ form, whose
int8 attention subgraph it recognises).
"""
import collections

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphIndex:
    """Producers, consumers and constant values of a graph's tensors (a snapshot: rebuild it
    after changing the graph). ``const`` sees through ``Identity`` nodes: torch.onnx stores a
    parameter equal to an earlier one as ``Identity(earlier)`` (in rotated artifacts every
    LayerScale gamma is ``Identity`` of the first LayerNorm's all-ones weight)."""

    def __init__(self, g: onnx.GraphProto):
        self.inits = {t.name: t for t in g.initializer}
        self.consts = {n.output[0]: n for n in g.node if n.op_type == 'Constant'}
        self.prod = {o: n for n in g.node for o in n.output}
        self.cons = collections.defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.cons[i].append(n)

    def const(self, name):
        while name not in self.inits and name in self.prod and self.prod[name].op_type == 'Identity':
            name = self.prod[name].input[0]
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return numpy_helper.to_array(self.consts[name].attribute[0].t) if name in self.consts else None

    def only_user(self, name, op):
        users = self.cons[name]
        return users[0] if len(users) == 1 and users[0].op_type == op else None


def prune(model: onnx.ModelProto) -> None:
    """Drop the nodes nothing reads (backwards from the graph outputs), then unused initializers."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    for t in [t for t in g.initializer if t.name not in needed]:
        g.initializer.remove(t)


def replace_nodes(g: onnx.GraphProto, replace, remove=()) -> None:
    """In place: each node of the (node, [new nodes]) pairs ``replace`` becomes its new nodes,
    the nodes of ``remove`` go (nodes as iterated from ``g.node``; held by the caller, so their
    ids stay theirs)."""
    new, gone = {id(n): ns for n, ns in replace}, {id(n) for n in remove}
    nodes = []
    for n in g.node:
        if id(n) in new:
            nodes.extend(new[id(n)])
        elif id(n) not in gone:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)


def add_ms_domain(model: onnx.ModelProto) -> None:
    if not any(o.domain == 'com.microsoft' for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid('com.microsoft', 1))


def _power_of_two(c) -> bool:
    m, _ = np.frexp(np.float64(c))
    return bool(np.isfinite(c) and c > 0 and m == 0.5)


def integer_attention_scores(model: onnx.ModelProto) -> int:
    """ONNX Runtime-specific rewrite of the int8 attention scores ``DQ(Q(q)) @ T(DQ(Q(k)))``
    (``attention='qk_int8'``): one ``com.microsoft.MatMulIntegerToFloat`` on the quantized q
    and k, the transpose moved onto the int8 k. The signed q codes are written as uint8 with
    the zero point + 128 (the same values: ``clip(round(x/s) + z, -128, 127) + 128``) so that
    ORT runs its u8 x s8 kernel (its own QDQ fusion makes both operands uint8: 1.4x slower
    here), and a power-of-two prescale of q (DINOv2's 1/sqrt(64), ``Mul`` before the
    quantizer) is folded into q's quantization scale, ``Q(x c; s) = Q(x; s / c)`` exactly.
    The integer products and the float ``s_q s_k acc`` are what the fake-quant model's float
    MatMul of the dequantized values computes, up to float association (ORT outputs identical
    to ORT's own fusion of the Q/DQ form, tested). Not for OpenVINO: it finds its int8 attention
    subgraph (q.k^T, softmax, x V) only in the Q/DQ form and runs this one in float (8-18 %
    slower in all, measured). Returns how many."""
    g = model.graph
    ix = GraphIndex(g)

    def q_dq(name):
        """(Q node, DQ node) when ``name`` is DQ(Q(x)) of one per-tensor quantizer, else None."""
        dq = ix.prod.get(name)
        q = ix.prod.get(dq.input[0]) if dq is not None and dq.op_type == 'DequantizeLinear' else None
        if q is None or q.op_type != 'QuantizeLinear' or len(q.input) != 3 or len(dq.input) != 3:
            return None
        sq, zq, sd, zd = (ix.const(i) for i in (q.input[1], q.input[2], dq.input[1], dq.input[2]))
        if any(v is None or v.size != 1 for v in (sq, zq, sd, zd)) or sq.item() != sd.item() \
                or zq.item() != zd.item() or zq.dtype != zd.dtype:
            return None
        return q, dq

    new, rewritten = [], 0
    for n in g.node:
        if n.op_type != 'MatMul':
            continue
        a = q_dq(n.input[0])
        t = ix.prod.get(n.input[1])
        is_t = t is not None and t.op_type == 'Transpose'
        perm = [at.ints for at in t.attribute if at.name == 'perm'] if is_t else []
        b = q_dq(t.input[0]) if perm else None
        if a is None or b is None or ix.const(a[0].input[0]) is not None:
            continue
        (qa, da), (qb, db) = a, b
        base = n.name.replace('/', '_').strip('_')
        x, s_a = qa.input[0], ix.const(qa.input[1]).astype(np.float32).reshape(())
        z_a = ix.const(qa.input[2])
        mul = ix.prod.get(x)
        if mul is not None and mul.op_type == 'Mul' and len(ix.cons[x]) == 1:
            c = [ix.const(i) for i in mul.input]
            k = 0 if c[0] is not None else 1
            if c[k] is not None and c[k].size == 1 and _power_of_two(float(c[k].item())):
                x, s_a = mul.input[1 - k], np.float32(s_a / np.float32(c[k].item()))
        if z_a.dtype == np.int8:
            z_a = (z_a.astype(np.int16) + 128).astype(np.uint8)
        g.initializer.extend([numpy_helper.from_array(np.asarray(s_a, np.float32), base + '_qscale'),
                              numpy_helper.from_array(np.asarray(z_a.reshape(()), z_a.dtype), base + '_qzp')])
        nodes = [helper.make_node('QuantizeLinear', [x, base + '_qscale', base + '_qzp'], [base + '_a8'],
                                  name=base + '_quant_a'),
                 helper.make_node('Transpose', [qb.output[0]], [base + '_bT8'], name=base + '_transpose_b',
                                  perm=list(perm[0])),
                 helper.make_node('MatMulIntegerToFloat', [base + '_a8', base + '_bT8', da.input[1], db.input[1],
                                                           base + '_qzp', db.input[2]], list(n.output),
                                  domain='com.microsoft', name=n.name + '_int8')]
        new.append((n, nodes))
        rewritten += 1
    replace_nodes(g, new)
    prune(model)
    if rewritten:
        add_ms_domain(model)
    return rewritten
