"""Calibration on the real model: stage 1 lowers the loss, stage 2 lands on the 4-bit
grid, the artifact reproduces the calibrated model exactly and refuses bad files."""
import json
import struct

import pytest
import torch

from gplq_ros.offline.calibration import batches_of, init_quantizers, stage1
from gplq_ros.offline.config import CalibConfig, LossConfig, Stage1Config
from gplq_ros.offline.losses import GPLQLoss, as_grid
from gplq_ros.offline.weight_ptq import basin_drift, collect_hessians, gptq_codes, stage2
from gplq_ros.offline.quantized import Modes, QuantDinoV2
from gplq_ros.offline.primitives import weight_codes, weight_scales
from gplq_ros.offline.spec import QuantSpec
from gplq_ros.onboard.artifact import ArtifactError, load_artifact, save_artifact
from gplq_ros.offline.fakequant import export_tensors, fakequant_model
from gplq_ros.offline.data import make_crops
from gplq_ros.offline.backbone import build_vit
from gplq_ros.offline.rotation import ones_preserving_orthogonal, rotate_vit_


def _two_images(images):
    return [images['2019_YELL_2_541000_4977000_image_crop.png'], images['AWPE_Pigeon_Lake_2020_DJI_0005.JPG']]


@pytest.fixture(scope='module')
def crops(images):
    return make_crops(_two_images(images), 8, seed=0)


@pytest.fixture(scope='module')
def small_crops(images):
    """The same crops at 112 px (64 patches): for the tests whose cost is many block passes."""
    return make_crops(_two_images(images), 8, seed=0, size=112)


def mimic_loss(qm, crops, cfg):
    loss, total = GPLQLoss(cfg.loss), 0.0
    grid = (crops[0].shape[-2] // 14, crops[0].shape[-1] // 14)
    with torch.no_grad():
        for x in batches_of(crops, 4):
            with qm.modes(act=False):
                fp = [as_grid(t, grid) for t in qm.block_tokens(x)]
            with qm.modes(act=True):
                q = [as_grid(t, grid) for t in qm.block_tokens(x)]
            total += float(loss(fp, q, [])['mimic'])
    return total


def test_quantizer_modes_are_scoped_and_restored(extractor):
    qm = QuantDinoV2(extractor, QuantSpec(exclude=['blocks.11.mlp.fc2']))
    qs, lins = list(qm.quantizers.values()), qm.linears
    assert qm.current_modes == Modes() and not any(q.enabled or q.observing for q in qs)
    with qm.modes(act=True, weight=True):
        assert all(q.enabled for q in qs) and lins['blocks.0.attn.qkv'].weight_enabled
        assert not lins['blocks.11.mlp.fc2'].weight_enabled            # excluded layers stay FP32
        with pytest.raises(RuntimeError), qm.modes(act=False, observe=True):
            assert all(q.observing and not q.enabled for q in qs)
            raise RuntimeError('inside the block')
        assert qm.current_modes == Modes(act=True, weight=True)
        assert all(q.enabled and not q.observing for q in qs)
    assert qm.current_modes == Modes() and not any(q.enabled for q in qs)
    assert not any(lin.weight_enabled for lin in lins.values())


def test_quant_model_without_quantization_is_the_fp32_model(extractor, crops):
    qm = QuantDinoV2(extractor, QuantSpec())
    with torch.no_grad():
        a, b = extractor.block_tokens(crops[0]), qm.block_tokens(crops[0])
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=2e-4, rtol=1e-4)
    assert len(qm.quantizers) == 12 * 8 and len(qm.linears) == 48


def _input_peak_to_rms(qm, x, layer='blocks.6.attn.qkv'):
    seen = []
    h = qm.linears[layer].in_quant.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
    try:
        with torch.no_grad():
            qm.block_tokens(x)
    finally:
        h.remove()
    return float(seen[0].abs().max() / seen[0].pow(2).mean().sqrt())


def test_rotated_model_is_the_same_function_with_smaller_activation_peaks(extractor, crops):
    q = ones_preserving_orthogonal(384, 0)
    torch.testing.assert_close(q @ q.T, torch.eye(384), atol=1e-5, rtol=0)      # float32 rounding of 384-term sums
    torch.testing.assert_close(q.sum(1), torch.ones(384), atol=1e-5, rtol=0)     # Q 1 = 1
    assert torch.equal(q, ones_preserving_orthogonal(384, 0)) and not torch.equal(q, ones_preserving_orthogonal(384, 1))
    plain, rot = QuantDinoV2(extractor, QuantSpec()), QuantDinoV2(extractor, QuantSpec(rotation='orthogonal'))
    assert extractor.rotation is None and plain.extractor.rotation is None           # the original is untouched
    assert torch.equal(rot.extractor.rotation, q)
    assert float(rot.extractor.vit.blocks[0].norm1.weight.std()) == 0.0               # scales folded into qkv
    with torch.no_grad():
        for x in crops[:2]:
            for a, b in zip(extractor.block_tokens(x), rot.block_tokens(x)):
                torch.testing.assert_close(b, a, atol=5e-4 * float(a.abs().max()), rtol=0)
            keys = [(9, 'value'), (5, 'token'), (11, 'token')]
            fa, fb = extractor(x, keys), rot(x, keys)
            for k in keys:
                torch.testing.assert_close(fb[k], fa[k], atol=5e-4 * float(fa[k].abs().max()), rtol=0)
    # what the 8-bit per-tensor quantizer of a rotated LayerNorm output sees: smaller peaks
    for x in crops[:2]:
        assert _input_peak_to_rms(rot, x) < 0.6 * _input_peak_to_rms(plain, x)
    vit = build_vit()
    with pytest.raises(ValueError, match='map the all-ones vector to itself'):
        rotate_vit_(vit, torch.linalg.qr(torch.randn(384, 384, generator=torch.Generator().manual_seed(0)))[0])
    with pytest.raises(ValueError, match='does not match embed_dim 384'):
        rotate_vit_(vit, torch.eye(3))


def test_stage1_lowers_the_mimicking_loss(extractor, small_crops):
    # The product's stage 1 (default cosine step decay) must lower the in-sample mimicking loss
    # over 24 steps whatever the CPU: other float kernels flip 4-bit codes, which acts like
    # another seed. With the constant step of version 1 the loss after 24 steps went +1.6 % on
    # an AMD Zen 4 (seed 0; -12.2 % with seed 1; 224 px crops) and the test failed there; with the
    # cosine decay it went -7.5 / -12.1 / -8.3 % for seeds 0 / 1 / 2 on the same machine (224 px),
    # and -13.6 / -14.5 / -11.6 % on 112 px crops on an Intel Xeon (AMX), so "at least 2 % lower"
    # holds with a margin of more than 3x the spread seen. 112 px: 14 s instead of 46.
    crops = small_crops
    assert Stage1Config().lr_schedule == 'cosine'
    cfg = CalibConfig(crops=8, batch=2, init_crops=8, stage1=Stage1Config(epochs=6), loss=LossConfig(lambda_reg=0.01))
    qm = QuantDinoV2(extractor, QuantSpec.from_bits('w4a4'))
    init_quantizers(qm, crops, 'minmax', 4)
    before = mimic_loss(qm, crops, cfg)
    weights_before = {n: lin.weight.clone() for n, lin in qm.linears.items()}
    hist = stage1(qm, crops, cfg)
    assert qm.current_modes == Modes()            # stage 1 left the switches as it found them
    assert not any(q.scale.requires_grad for q in qm.quantizers.values())
    after = mimic_loss(qm, crops, cfg)
    assert len(hist['total']) == 24 and set(hist) >= {'mimic', 'corner', 'edge', 'reg', 'total'}
    assert after < 0.98 * before, (before, after)
    for n, lin in qm.linears.items():          # stage 1 never touches the weights
        assert torch.equal(lin.weight, weights_before[n])


@pytest.fixture(scope='module')
def calibrated(extractor, crops, small_crops):
    spec = QuantSpec.from_bits('w4a8', group_size=32)
    qm = QuantDinoV2(extractor, spec)
    stage1(qm, small_crops, CalibConfig(crops=8, batch=4, stage1=Stage1Config(epochs=1), init_crops=8))
    hs = collect_hessians(qm, batches_of(crops, 4))
    basin = stage2(qm, spec, hs)
    assert qm.current_modes == Modes()
    qm.set_modes(act=True, weight=True)
    return qm, hs, basin


def test_stage2_weights_lie_on_the_4bit_grid(calibrated):
    qm, _, basin = calibrated
    for name, lin in qm.linears.items():
        assert lin.bits == 4 and lin.codes.min() >= -8 and lin.codes.max() <= 7
        out_f, in_f = lin.weight.shape
        ratio = lin.weight_q.reshape(out_f, in_f // 32, 32) / lin.scales[..., None]
        torch.testing.assert_close(ratio, torch.round(ratio), atol=1e-4, rtol=0)   # |code| <= 8: float32 ~1e-6
        torch.testing.assert_close(ratio.round().to(torch.int8).reshape(out_f, in_f), lin.codes)
    assert 0 < basin['drift']['overall'] < 0.5
    assert set(basin['drift']) == set(qm.linears) | {'overall'}
    assert basin['drift'] == basin_drift(qm)


def test_gptq_lowers_the_layer_output_error(calibrated):
    qm, hs, _ = calibrated
    name = 'blocks.5.mlp.fc1'
    w, h = qm.linears[name].weight.detach(), hs[name]
    s = weight_scales(w, 4, 32)

    def out_err(codes):
        d = (codes.float().reshape(w.shape[0], -1, 32) * s[..., None]).reshape(w.shape) - w
        return float(torch.trace(d.double() @ h @ d.double().T))
    assert out_err(gptq_codes(w, h, s, 4, 32)) < 0.8 * out_err(weight_codes(w, s, 4, 32))


def test_act_order_gptq_per_channel(calibrated):
    from gplq_ros.offline.weight_ptq import quantize_layer
    qm, hs, _ = calibrated
    name = 'blocks.5.mlp.fc1'
    lin = qm.linears[name]
    w, h = lin.weight.detach(), hs[name]

    def out_err():
        d = lin.weight_q.double() - w.double()
        return float(torch.trace(d @ h @ d.T))
    errs, saved = {}, (lin.codes, lin.scales, lin.bits, lin.group_size)
    try:
        for kw in ({'weight_method': 'rtn'}, {}, {'act_order': True}):
            quantize_layer(lin, 4, QuantSpec(**kw), h)
            assert lin.codes.min() >= -8 and lin.codes.max() <= 7 and lin.scales.shape == (w.shape[0], 1)
            errs[tuple(kw)] = out_err()
    finally:
        lin.set_quantized(*saved)       # the module's fixture stays as calibrated
    assert errs[('act_order',)] < errs[()] < errs[('weight_method',)], errs
    with pytest.raises(ValueError, match='act_order'):
        QuantSpec(act_order=True, group_size=32)


def test_enforce_basin_keeps_drifting_layers_at_8bit(extractor, crops):
    spec = QuantSpec.from_bits('w4a8', weight_method='rtn')
    qm = QuantDinoV2(extractor, spec)
    init_quantizers(qm, crops[:4], 'minmax', 4)
    res = stage2(qm, spec, None, eps_basin=0.1, enforce_basin=True)
    assert res['kept_8bit'] and set(res['kept_8bit']) == set(res['over_eps'])
    assert all(qm.linears[n].bits == 8 for n in res['kept_8bit'])
    assert all(res['drift'][n] <= 0.1 for n in res['kept_8bit'])
    assert res['spec'].keep_8bit == sorted(res['kept_8bit']) and spec.keep_8bit == []   # the given spec unchanged


def save(qm, path, **meta):
    tensors, layout = export_tensors(qm)
    base = {'backbone': 'dinov2_vits14', 'weights_sha256': qm.extractor.weights_sha256,
            'spec': qm.spec.to_dict(), 'tag': qm.spec.tag, **layout}
    base.update(meta)
    return save_artifact(path, tensors, base)


def test_artifact_reproduces_the_calibrated_model_exactly(calibrated, crops, tmp_path):
    qm, _, _ = calibrated
    path = tmp_path / 'a.safetensors'
    save(qm, path)
    loaded, meta = fakequant_model(path, qm.extractor.weights_sha256)
    with torch.no_grad():
        for x in crops[:2]:
            a, b = qm.block_tokens(x), loaded.block_tokens(x)
            for u, v in zip(a, b):
                assert torch.equal(u, v)
            key = (9, 'value')
            assert torch.equal(qm(x, [key])[key], loaded(x, [key])[key])
    # 4-bit codes are stored packed: the file is well under a quarter of FP32
    assert path.stat().st_size < 0.25 * 22_056_192 * 4
    assert meta['layers']['blocks.0.attn.qkv']['bits'] == 4


def test_artifact_refusals(calibrated, tmp_path):
    qm, _, _ = calibrated
    path = tmp_path / 'a.safetensors'
    save(qm, path)
    with pytest.raises(FileExistsError, match='--force'):
        save(qm, path)
    with pytest.raises(ArtifactError, match='reference weights'):
        load_artifact(path, expect_weights_sha256='0' * 64)
    with pytest.raises(ArtifactError, match="backbone='dinov2_vits14', expected 'dinov2_vitb14'"):
        load_artifact(path, expect_backbone='dinov2_vitb14')
    with pytest.raises(ArtifactError, match='not found'):
        load_artifact(tmp_path / 'missing.safetensors')

    other = tmp_path / 'v2.safetensors'
    save(qm, other)
    raw = bytearray(other.read_bytes())
    hlen = struct.unpack('<Q', raw[:8])[0]
    header = json.loads(raw[8:8 + hlen])
    meta = json.loads(header['__metadata__']['gplq_ros'])
    meta['version'] = 99
    header['__metadata__']['gplq_ros'] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b' ' * (-len(new) % 8)
    other.write_bytes(struct.pack('<Q', len(new)) + new + raw[8 + hlen:])
    with pytest.raises(ArtifactError, match='version=99 is not supported'):
        load_artifact(other)

    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF                                    # flip bits in the tensor data
    corrupt = tmp_path / 'corrupt.safetensors'
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match='checksum mismatch'):
        load_artifact(corrupt)
    (tmp_path / 'junk.safetensors').write_bytes(b'not a safetensors file')
    with pytest.raises(ArtifactError, match='not a readable safetensors'):
        load_artifact(tmp_path / 'junk.safetensors')


def test_mixed_precision_is_deterministic_and_respects_the_budget(extractor, small_crops):
    from gplq_ros.offline.mixed_precision import choose_8bit, layer_sensitivity
    from gplq_ros.offline.weight_ptq import quantize_layer

    def run(fraction, target):
        spec = QuantSpec.from_bits('w4a8', weight_method='rtn')
        qm = QuantDinoV2(extractor, spec)
        init_quantizers(qm, small_crops[:4], 'minmax', 4)
        stage2(qm, spec, None)
        xs = list(batches_of(small_crops[:2], 2))
        sens = layer_sensitivity(qm, xs)
        chosen, curve = choose_8bit(qm, xs, sens, fraction, target,
                                    lambda n, b: quantize_layer(qm.linears[n], b, spec, None))
        return qm, sens, chosen, curve

    qm, sens, chosen, curve = run(0.25, None)
    assert len(sens) == 48 and all(v >= 0 for v in sens.values()) and qm.current_modes == Modes()
    total = sum(lin.weight.numel() for lin in qm.linears.values())
    assert chosen and sum(qm.linears[n].weight.numel() for n in chosen) / total <= 0.25
    assert all(qm.linears[n].bits == 8 for n in chosen)
    assert curve[-1][1] > curve[0][1]                     # 8-bit layers raise the final-token cosine
    target = (curve[0][1] + curve[-1][1]) / 2
    _, sens2, fewer, curve2 = run(0.25, target)           # stops once the target is reached
    # deterministic: a second run from scratch measures the same sensitivities and takes the
    # same layers in the same order (a prefix of the first run's choice)
    assert sens2 == pytest.approx(sens, rel=1e-6) and fewer == chosen[:len(fewer)]
    assert len(fewer) < len(chosen) and curve2[-1][1] >= target


def test_sensitivity_on_the_graph_outputs_measures_each_output(extractor, small_crops):
    """objective='outputs' (the 'fast' recipe): the sensitivity is the mean cosine drop of the
    heads' tokens (block 11) and the VLAD features (block 9's attention values): a layer after
    block 9's values changes only the tokens, so it counts half, and nothing of the values."""
    from gplq_ros.offline.mixed_precision import layer_sensitivity
    from gplq_ros.onboard.pipeline import PipelineConfig
    keys = PipelineConfig().keys
    assert set(keys) == {(11, 'token'), (9, 'value')}
    spec = QuantSpec.from_bits('w4a8', weight_method='rtn')
    qm = QuantDinoV2(extractor, spec)
    init_quantizers(qm, small_crops[:4], 'minmax', 4)
    stage2(qm, spec, None)
    xs = list(batches_of(small_crops[:2], 2))
    both, tok, val = (layer_sensitivity(qm, xs, keys=k) for k in (keys, ((11, 'token'),), ((9, 'value'),)))
    later = ('blocks.9.attn.proj', 'blocks.9.mlp', 'blocks.10.', 'blocks.11.')
    after_values = [n for n in both if n.startswith(later)]
    assert len(after_values) == 4 * 2 + 3
    assert all(val[n] == 0 for n in after_values), {n: val[n] for n in after_values}
    assert all(both[n] == pytest.approx(tok[n] / 2, rel=1e-4, abs=1e-7) for n in after_values)
    assert all(val[n] > 0 for n in both if int(n.split('.')[1]) < 9)    # every earlier layer moves the values
    assert sum(both.values()) == pytest.approx((sum(tok.values()) + sum(val.values())) / 2, rel=0.02)


def test_compensation_lowers_block_error_and_round_trips(extractor, crops, images, tmp_path):
    import numpy as np

    from gplq_ros.offline.compensation import fit_compensation
    from gplq_ros.offline.onnx_export import export_artifact
    from gplq_ros.onboard.engine import load
    from gplq_ros.onboard.metrics import token_cosine
    spec = QuantSpec.from_bits('w4a8', weight_method='rtn')
    qm = QuantDinoV2(extractor, spec)
    init_quantizers(qm, crops, 'minmax', 4)
    stage2(qm, spec, None)
    rep = fit_compensation(qm, list(batches_of(crops, 4)), rank=16)
    assert qm.current_modes == Modes() and sorted(qm.compensation) == list(range(12))
    assert all(a < b for a, b in zip(rep['after'], rep['before'])), rep   # on the calibration crops
    qm.set_modes(act=True, weight=True, comp=True)
    path = tmp_path / 'c.safetensors'
    save(qm, path)
    loaded, meta = fakequant_model(path, qm.extractor.weights_sha256)
    assert meta['compensation']['0'] == {'rank': 16}
    with torch.no_grad():
        for u, v in zip(qm.block_tokens(crops[0]), loaded.block_tokens(crops[0])):
            assert torch.equal(u, v)
        with qm.modes(comp=False):
            plain = qm.block_tokens(crops[0])[-1]
        assert not torch.equal(plain, qm.block_tokens(crops[0])[-1])      # the compensation is in the model
    graph = export_artifact(path, tmp_path / 'c.onnx', (168, 224))['path']
    frame = np.ascontiguousarray(images['SOAP_031.png'])
    # ORT: the export is exact up to int8-kernel rounding; OpenVINO's kernels round a few values
    # differently and, in this unrotated form with 8-bit v/softmax, the flips grow (0.998 measured)
    for backend, bound in (('onnxruntime', 0.999), ('openvino', 0.995)):
        prep, tok, _ = load(graph, backend=backend).features(frame)
        with torch.no_grad():
            ref = loaded(torch.from_numpy(prep.tensor), [(11, 'token')])[(11, 'token')][0].numpy()
        assert token_cosine(tok, ref) > bound, backend
    # an artifact whose compensation does not fit its model is refused
    tensors, meta = load_artifact(path)
    tensors['c/blocks.3.a'] = tensors['c/blocks.3.a'][:, :8]
    bad = tmp_path / 'bad.safetensors'
    save_artifact(bad, tensors, {k: v for k, v in meta.items() if k != 'checksum'})
    with pytest.raises(ArtifactError, match='compensation of block 3'):
        fakequant_model(bad)


@pytest.mark.parametrize('attention', ['qkv_probs', 'qk_int8'])
def test_rotated_artifact_round_trips_and_exports(extractor, crops, images, tmp_path, attention):
    import numpy as np
    import onnx

    from gplq_ros.offline.onnx_export import export_artifact
    from gplq_ros.onboard.engine import load
    from gplq_ros.onboard.metrics import token_cosine
    spec = QuantSpec.from_bits('w4a8', weight_method='rtn', rotation='orthogonal', rotation_seed=3,
                               attention=attention)
    qm = QuantDinoV2(extractor, spec)
    assert len(qm.quantizers) == 12 * (8 if attention == 'qkv_probs' else 6)
    init_quantizers(qm, crops, 'minmax', 4)
    if attention == 'qk_int8':   # q and k signed, zero-point 0; v and the softmax output not quantized
        for name in ('blocks_3_q', 'blocks_3_k'):
            q = qm.quantizers[name]
            assert q.symmetric and q.qrange == (-128, 127) and float(q.qparams()[1]) == 0.0
        assert 'blocks_3_v' not in qm.quantizers and 'blocks_3_attn' not in qm.quantizers
    stage2(qm, spec, None)
    qm.set_modes(act=True, weight=True)
    path = tmp_path / 'r.safetensors'
    save(qm, path)
    loaded, meta = fakequant_model(path, qm.extractor.weights_sha256)
    assert meta['spec']['rotation'] == 'orthogonal' and torch.equal(loaded.extractor.rotation, qm.extractor.rotation)
    with torch.no_grad():
        for u, v in zip(qm.block_tokens(crops[0]), loaded.block_tokens(crops[0])):
            assert torch.equal(u, v)
    # the rotated qk_int8 export on both backends: tests/test_ort_graph.py (time)
    graph = export_artifact(path, tmp_path / 'r.onnx', (168, 224))['path'] if attention == 'qkv_probs' else None
    model = onnx.load(str(graph), load_external_data=False) if graph else onnx.ModelProto()
    int8_q = [n for n in model.graph.node if n.op_type == 'QuantizeLinear' and '/attn/' in n.name
              and '_quant/' in n.name and 'in_quant' not in n.name]
    assert len(int8_q) == (12 * 4 if graph else 0)
    for backend in ('onnxruntime', 'openvino') if graph else ():
        frame = np.ascontiguousarray(images['SOAP_031.png'])
        prep, tok, _ = load(graph, backend=backend).features(frame)
        with torch.no_grad():
            ref = loaded(torch.from_numpy(prep.tensor), [(11, 'token')])[(11, 'token')][0].numpy()
        assert token_cosine(tok, ref) > 0.999, backend
    tensors, meta = load_artifact(path)
    del tensors['r/rotation']
    bad = tmp_path / 'bad.safetensors'
    save_artifact(bad, tensors, {k: v for k, v in meta.items() if k != 'checksum'})
    with pytest.raises(ArtifactError, match="rotation='orthogonal' but the tensor r/rotation is missing"):
        fakequant_model(bad)


def test_learned_rounding_lowers_block_error_and_stays_on_the_grid(extractor, small_crops):
    from gplq_ros.offline.rounding import SoftRounding, refine_rounding, soft_weights
    spec = QuantSpec.from_bits('w4a8', weight_method='rtn')   # stage 2 codes: round to nearest
    qm = QuantDinoV2(extractor, spec)
    init_quantizers(qm, small_crops, 'minmax', 4)
    stage2(qm, spec, None)
    lin = qm.linears['blocks.0.mlp.fc1']
    r = SoftRounding(lin)
    # it starts at the stage-2 codes: hard rounding equal, soft weights within 0.1 step of them (h = 0.9 or 0.1)
    assert torch.equal(r.codes(), lin.codes)
    assert bool(((r() - lin.weight_q).abs() <= 0.1 * r.step.abs() + 1e-6).all())
    # the context manager restores the Linears also when the block raises
    with pytest.raises(RuntimeError):
        with soft_weights(qm.linears, {'blocks.0.mlp.fc1': r}):
            assert qm.linears['blocks.0.mlp.fc1'].soft_weight is r
            raise RuntimeError('inside')
    assert qm.linears['blocks.0.mlp.fc1'].soft_weight is None
    w = {n: lin.weight.detach().clone() for n, lin in qm.linears.items()}
    old = {n: lin.codes.clone() for n, lin in qm.linears.items()}
    rep = refine_rounding(qm, small_crops, iters=60, lr=0.05, lam=1.0, batch=2)   # 30: no code moves
    assert qm.current_modes == Modes()
    assert len(rep['before']) == len(rep['after']) == 12
    assert all(a <= b for a, b in zip(rep['after'], rep['before'])), rep   # a worse block keeps its codes
    improved = sum(a < 0.98 * b for a, b in zip(rep['after'], rep['before']))
    assert improved >= 8, rep        # nearest rounding is not the best rounding of a block
    assert sum(c > 0 for c in rep['changed']) == improved
    for n, lin in qm.linears.items():
        assert torch.equal(lin.weight, w[n])          # the FP32 weights are untouched
        ratio = w[n] / lin.scales
        fl = torch.floor(ratio)
        c = lin.codes.float()
        # every code is floor or ceil of w / s, inside the 4-bit range, and the dequantized
        # weights are the codes times the unchanged scales
        assert bool(((c == fl) | (c == fl + 1) | (c == old[n].float())).all()), n
        assert int(c.min()) >= -8 and int(c.max()) <= 7
        assert torch.allclose(lin.weight_q, c * lin.scales)


def test_qat_baseline_trains_against_a_fixed_fp32_teacher(extractor, small_crops):
    from gplq_ros.offline.qat import qat
    spec = QuantSpec.from_bits('w4a8', weight_method='rtn')
    cfg = CalibConfig(batch=4, lr=0.01)
    qm = QuantDinoV2(extractor, spec)
    init_quantizers(qm, small_crops, 'minmax', 4)
    stage2(qm, spec, None)
    qm.set_modes(act=True, weight=True)
    w0 = {n: lin.weight.detach().clone() for n, lin in qm.linears.items()}

    def final_error():          # FP32 model vs the quantized model (weights and activations)
        with torch.no_grad():
            x = torch.cat(small_crops)
            with qm.modes(act=False, weight=False):
                ref = qm.block_tokens(x)[-1]
            return float(((qm.block_tokens(x)[-1] - ref) ** 2).mean() / (ref ** 2).mean())
    before = final_error()
    hist = qat(qm, small_crops, cfg, steps=8)          # the default weight step (qat's docstring: why 1e-6)
    after = final_error()
    assert len(hist['total']) == 8 and hist['wall_s'][0] > 0
    # what QAT trains: the mimicking loss over the 8 crops (2 batches an epoch, every epoch all 8) falls
    # from the first epoch to the last; the final tokens' error, which it does not train directly, does not
    # rise. Bounds from what is optimized, not a CPU's ratio: 0.80x on an Intel Xeon and 1.31x on an AMD
    # Zen 5 with the former step of 1e-5, whose code flips raised the loss itself (qat's docstring)
    first, last = sum(hist['total'][:2]) / 2, sum(hist['total'][-2:]) / 2
    assert last < first, hist['total']
    assert after < before, (before, after)
    assert qm.current_modes == Modes(act=True, weight=True)
    for n, lin in qm.linears.items():
        assert torch.equal(lin.weight, w0[n]) and not lin.weight.requires_grad   # FP32 weights put back
        assert lin.soft_weight is None and bool((lin.scales > 0).all())
        assert int(lin.codes.min()) >= -8 and int(lin.codes.max()) <= 7
        assert torch.allclose(lin.weight_q, lin.codes.float() * lin.scales)
    assert not any(p.requires_grad for q in qm.quantizers.values() for p in (q.scale, q.zero_point))
