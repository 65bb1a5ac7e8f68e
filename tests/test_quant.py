"""Quantizer math, packing and validated configs (no model)."""
import numpy as np
import pytest
import torch

from gplq_ros.offline.config import CalibConfig
from gplq_ros.onboard.packing import pack_int4, unpack_int4
from gplq_ros.offline.primitives import (ActQuantizer, dequantize_weight, fake_quant, fake_quant_reference,
                                         weight_codes, weight_scales)
from gplq_ros.offline.spec import QuantSpec


def test_fake_quant_roundtrip_and_clamp():
    s, z = torch.tensor([0.5]), torch.tensor([3.0])
    grid = (torch.arange(0, 16, dtype=torch.float32) - 3) * 0.5       # every representable value
    torch.testing.assert_close(fake_quant(grid, s, z, 0, 15), grid, rtol=0, atol=0)
    x = torch.linspace(-1.4, 5.9, 200)
    y = fake_quant(x, s, z, 0, 15)
    assert torch.all((y - x).abs() <= 0.25 + 1e-6)                      # half a step inside range
    far = fake_quant(torch.tensor([-100.0, 100.0]), s, z, 0, 15)
    torch.testing.assert_close(far, torch.tensor([-1.5, 6.0]))         # clamped to qmin/qmax


@pytest.mark.parametrize('channels', [1, 8])
def test_custom_backward_matches_autograd_reference(channels):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 6, 8, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    s = torch.full((channels,), 0.3, dtype=torch.float64, requires_grad=True)
    z = torch.full((channels,), 7.4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, 8, generator=gen, dtype=torch.float64)
    # exclude values whose code lands exactly on qmin/qmax: the reference's STE arithmetic
    # (v + (round(v) - v)) can fall 1 ulp outside there and disagree on the clamp mask
    q = torch.round(x.detach() / 0.3) + 7
    w = w * ((q != 0) & (q != 15))
    grads = []
    for fn in (fake_quant, fake_quant_reference):
        x.grad = s.grad = z.grad = None
        y = fn(x, s, z, 0, 15, 0.1)
        (y * w).sum().backward()
        grads.append((y.detach(), x.grad.clone(), s.grad.clone(), z.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert grads[0][2].abs().sum() > 0 and grads[0][3].abs().sum() > 0  # s and z do learn


def test_zero_point_gradient_only_from_clipped_values():
    s = torch.tensor([1.0], requires_grad=True)
    z = torch.tensor([0.0], requires_grad=True)
    fake_quant(torch.tensor([0.2, 3.0]), s, z, 0, 15).sum().backward()  # nothing clipped
    assert z.grad.item() == 0.0 and s.grad.item() != 0.0
    z.grad = None
    fake_quant(torch.tensor([-5.0]), s, z, 0, 15).sum().backward()      # clipped at qmin
    assert z.grad.item() == pytest.approx(-1.0)


def test_act_quantizer_observe_init_enable():
    q = ActQuantizer(8, channels=4, name='t')
    x = torch.randn(10, 7, 4) * torch.tensor([1.0, 10.0, 0.1, 3.0])
    q.observe()
    assert torch.equal(q(x), x)
    q.init_from_stats('minmax')
    q.enable()
    y = q(x)
    step = q.qparams()[0]
    assert torch.all((y - x).abs() <= step / 2 + 1e-5)                 # per channel, no clipping
    with pytest.raises(ValueError, match='bits'):
        ActQuantizer(1)


@pytest.mark.parametrize('n', [0, 1, 7, 8, 1001])
def test_int4_packing_is_exact(n):
    codes = np.random.default_rng(n).integers(-8, 8, size=n).astype(np.int8)
    packed = pack_int4(codes)
    assert packed.dtype == np.uint8 and packed.size == (n + 1) // 2
    np.testing.assert_array_equal(unpack_int4(packed, n), codes)


def test_int4_packing_rejects_out_of_range():
    with pytest.raises(ValueError, match=r'\[-8, 7\]'):
        pack_int4(np.array([8], np.int8))
    with pytest.raises(ValueError, match='cannot unpack'):
        unpack_int4(np.zeros(2, np.uint8), 5)


@pytest.mark.parametrize('group', [None, 32])
def test_weight_codes_on_grid_and_mse_clip_helps(group):
    w = torch.randn(64, 128) * torch.linspace(0.1, 2, 64)[:, None]
    w[0, 5] = 12.0  # an outlier weight
    errs = {}
    for clip in ('minmax', 'mse'):
        s = weight_scales(w, 4, group, clip)
        assert s.shape == (64, 1 if group is None else 128 // group)
        c = weight_codes(w, s, 4, group)
        assert c.dtype == torch.int8 and c.min() >= -8 and c.max() <= 7
        deq = dequantize_weight(c, s, group)
        ratio = deq.reshape(64, -1, group or 128) / s[..., None]
        torch.testing.assert_close(ratio, torch.round(ratio))              # on the 4-bit grid
        errs[clip] = float(((deq - w) ** 2).sum())
    assert errs['mse'] <= errs['minmax']


def test_specs_and_configs_are_validated():
    assert QuantSpec.from_bits('W4A8').tag == 'w4a8'
    assert QuantSpec.from_bits('w4a4').act_granularity == 'channel'
    assert QuantSpec.from_bits('w4a8').act_granularity == 'tensor'
    with pytest.raises(ValueError, match='wXaY|w4a8'):
        QuantSpec.from_bits('int4')
    with pytest.raises(ValueError, match='weight_bits=9'):
        QuantSpec(weight_bits=9)
    with pytest.raises(ValueError, match='group_size=48'):
        QuantSpec(group_size=48)
    with pytest.raises(ValueError, match="'blocks.1.mlp'"):
        QuantSpec(exclude=['blocks.1.mlp'])
    with pytest.raises(ValueError, match='beta=-1'):
        CalibConfig(beta=-1)
    with pytest.raises(ValueError, match="method='adaround'"):
        CalibConfig(method='adaround')


def test_cli_options_come_from_the_config_dataclasses():
    """gplq_calibrate's options are generated from QuantSpec and CalibConfig: no option, the
    dataclass defaults; every field has an option; '--group-size 0' means per output channel."""
    import argparse
    import dataclasses

    from gplq_ros.tools.common import add_config_arguments, config_from_args
    ap = argparse.ArgumentParser()
    add_config_arguments(ap, QuantSpec)
    add_config_arguments(ap, CalibConfig)
    args = ap.parse_args([])
    assert config_from_args(QuantSpec, args) == QuantSpec() and config_from_args(CalibConfig, args) == CalibConfig()
    opts = {a.dest for a in ap._actions}
    for cls in (QuantSpec, CalibConfig):
        assert {f.name for f in dataclasses.fields(cls)} - {'version'} <= opts
    args = ap.parse_args(['--group-size', '0', '--keep-8bit', 'blocks.9.attn.qkv', '--epochs', '3', '--pca-final',
                          '--method', 'minmax'])
    spec, cfg = config_from_args(QuantSpec, args), config_from_args(CalibConfig, args)
    assert spec.group_size is None and spec.keep_8bit == ['blocks.9.attn.qkv']
    assert cfg.epochs == 3 and cfg.pca_final and cfg.method == 'minmax'
    assert config_from_args(QuantSpec, ap.parse_args(['--group-size', '32'])).group_size == 32
    with pytest.raises(SystemExit):
        ap.parse_args(['--method', 'nope'])
    with pytest.raises(ValueError, match='epochs'):
        config_from_args(CalibConfig, ap.parse_args(['--epochs', '-1']))
