"""The graph rewrites of the GPLQ export (``offline.onnx_export``: LayerScales folded through
torch's deduplicating ``Identity``, split qkv Linears, and for ONNX Runtime the integer q.k^T
attention scores) compute what the fake-quant model computes, on ONNX Runtime and OpenVINO."""
import copy
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from gplq_ros.offline import onnx_export as ox
from gplq_ros.offline.calibration import init_quantizers
from gplq_ros.offline.data import make_crops
from gplq_ros.offline.fakequant import export_tensors, fakequant_from_tensors
from gplq_ros.offline.quantized import QuantDinoV2
from gplq_ros.offline.spec import QuantSpec
from gplq_ros.offline.weight_ptq import correct_biases, quantize_layer, stage2
from gplq_ros.onboard.artifact import load_artifact, save_artifact
from gplq_ros.onboard.engine import graph_meta, load
from gplq_ros.onboard.metrics import token_cosine

HW = (168, 224)
FRAMES = ('SOAP_031.png', '2019_YELL_2_541000_4977000_image_crop.png')


@pytest.fixture(scope='module')
def rotated_qk_artifact(extractor, images, tmp_path_factory):
    """A W4A8 RTN artifact of the onboard default's form: rotated residual stream (all-ones
    LayerScales), int8 q.k^T attention (signed symmetric q, k), per-output-channel weights on
    the multiplier and codebook grids, one 8-bit layer, bias correction."""
    spec = QuantSpec.from_bits('w4a8', weight_method='rtn', rotation='orthogonal', rotation_seed=3,
                               attention='qk_int8', weight_grid='multiplier', keep_8bit=['blocks.11.mlp.fc2'])
    qm = QuantDinoV2(extractor, spec)
    crops = make_crops([images[FRAMES[1]]], 4, seed=0)
    init_quantizers(qm, crops, 'minmax', 4)
    stage2(qm, spec, None)
    # the 4-bit grids of #21 (offline.grids) decode into int8 weights: the same graph, here on
    # both backends: three layers on the codebook grid, the rest on the multiplier grid
    for name in ('blocks.1.attn.proj', 'blocks.6.attn.proj', 'blocks.6.attn.qkv'):   # the k-means takes time
        quantize_layer(qm.linears[name], 4, replace(spec, weight_grid='codebook'), None)
    correct_biases(qm, [torch.cat(crops[:2])])
    qm.set_modes(act=True, weight=True)
    tensors, layout = export_tensors(qm)
    path = tmp_path_factory.mktemp('ort_graph') / 'rot_qk.safetensors'
    save_artifact(path, tensors, {'backbone': 'dinov2_vits14', 'weights_sha256': qm.extractor.weights_sha256,
                                  'spec': qm.spec.to_dict(), 'tag': qm.spec.tag, **layout})
    return path


def plain_qdq_graph(artifact):
    """The export before any rewrite (fake-quant trace + int8 weight codes): ORT fuses it itself."""
    tensors, meta = load_artifact(artifact)
    qm = fakequant_from_tensors(tensors, meta, artifact)
    for q in qm.quantizers.values():
        q.freeze()
    model = ox.trace_onnx(qm.extractor, HW, kind='gplq', extra_meta={'artifact_checksum': meta['checksum']})
    ox.integer_weights(model, tensors, meta['layers'])
    return model, qm


def test_rewritten_graphs_match_the_fake_quant_model(rotated_qk_artifact, images):
    ort = ox.export_artifact(rotated_qk_artifact, rotated_qk_artifact.with_name('ort.onnx'), HW, force=True,
                             for_onnxruntime=True)                 # packed: the engine reads the artifact
    assert (ort['fused'], ort['folded'], ort['split_qkv'], ort['attention']) == (48, 24, 12, 12)
    plain, fq = plain_qdq_graph(rotated_qk_artifact)
    plain_path = ox.save_model(plain, rotated_qk_artifact.with_name('plain.onnx'), force=True)
    default = copy.deepcopy(plain)                   # export_artifact's default passes (OpenVINO's form)
    assert ox.fuse_integer_linears(default) == (48, 24) and ox.split_qkv(default) == 12   # LayerScales all ones
    default_path = ox.save_model(default, rotated_qk_artifact.with_name('default.onnx'), force=True)
    ops = {form: [n.op_type for n in onnx.load(str(p)).graph.node]
           for form, p in (('default', default_path), ('ort', ort['path']))}
    # 48 Linears, qkv as q, k and v: 72 integer MatMuls; the ORT form adds the 12 q.k^T and keeps
    # no DequantizeLinear; float MatMuls left there: softmax x V and the final rotation
    assert ops['default'].count('MatMulIntegerToFloat') == 72 and ops['default'].count('DequantizeLinear') == 24
    assert ops['ort'].count('MatMulIntegerToFloat') == 84 and 'DequantizeLinear' not in ops['ort']
    assert ops['ort'].count('MatMul') == 13 and ops['ort'].count('Mul') == ops['default'].count('Mul') - 12
    assert graph_meta(onnx.load(str(ort['path']), load_external_data=False))['rewrites'] == 'onnxruntime'
    graphs = {'default': default_path, 'ort': ort['path']}
    engines = {(form, b): load(p, backend=b, warmup=0) for form, p in graphs.items()
               for b in ('onnxruntime', 'openvino')}
    # the engine gives ONNX Runtime the integer attention scores of a file in OpenVINO's form
    assert engines[('default', 'onnxruntime')].ort_rewrites == 12
    assert engines[('default', 'openvino')].ort_rewrites == 0 == engines[('ort', 'onnxruntime')].ort_rewrites
    plain = load(plain_path, backend='onnxruntime', warmup=0)
    plain_ov = load(plain_path, backend='openvino', warmup=0)
    for name in FRAMES:
        frame = np.ascontiguousarray(images[name][:480, :640])
        prep, tok, _ = engines[('ort', 'onnxruntime')].features(frame)
        with torch.no_grad():
            o = fq(torch.from_numpy(prep.tensor), [(11, 'token'), (9, 'value')])
        ref, ref_vf = o[(11, 'token')][0].numpy(), o[(9, 'value')][0].numpy()
        # exact rewrites: against ORT's own fusion of the plain Q/DQ graph only rounding flips
        # (other kernels) remain, bounded as test_runtime_engine bounds its fused-vs-unfused graphs;
        # to the fake-quant model the same bound as there: 4x that floor or 1e-3
        floor = 1.0 - token_cosine(plain.features(frame)[1], tok)
        assert floor < 2e-3, (name, floor)
        # the plain Q/DQ graph's own distance from the fake-quant model on this runtime and CPU: without
        # VNNI (an AMD Zen 3, AVX2) u8 x s8 pair sums saturate at 16 bits and ORT's plain and fused graphs
        # agree exactly (floor 0) while both are 4.2e-3 from the fake-quant model on SOAP_031; the
        # rewritten forms may not be more than 4x further than the plain graph is
        plain_dev = 1.0 - token_cosine(plain.features(frame)[1], ref)
        # OpenVINO against the fake-quant model: its own requantization rounding, measured on the plain
        # Q/DQ graph (this frame's OpenVINO floor); the rewritten forms get the same 4x / 1e-3 as on ONNX
        # Runtime. Its kernels differ by CPU: the fixed 0.999 this replaced failed at 1.1e-3 on an AMD Zen 5,
        # and on an AMD Zen 3 (AVX2, no VNNI) the plain graph itself is 5.1e-3 off on SOAP_031, so no
        # absolute bound: an export fault moves the rewritten forms far from the plain graph's floor
        floor_ov = 1.0 - token_cosine(plain_ov.features(frame)[1], ref)
        for form in ('default', 'ort'):
            _, tok_f, vf_f = engines[(form, 'onnxruntime')].features(frame)
            dev = 1.0 - token_cosine(tok_f, ref)
            assert dev <= max(4 * floor, 4 * plain_dev, 1e-3), (name, form, floor, plain_dev)
            assert token_cosine(vf_f, ref_vf) > 0.99, (name, form)
            # OpenVINO runs both forms exactly as it runs the plain Q/DQ graph (floor_ov above)
            tok_ov = engines[(form, 'openvino')].features(frame)[1]
            assert 1.0 - token_cosine(tok_ov, ref) <= max(4 * floor_ov, 1e-3), (name, form, floor_ov)
