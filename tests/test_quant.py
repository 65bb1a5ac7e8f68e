"""Quantizer math, packing and validated configs (no model)."""
import json
import math
from dataclasses import replace
import typing

import numpy as np
import pytest
import torch

from gplq_ros.offline.config import (CalibConfig, CompensationConfig, LossConfig, MixedPrecisionConfig, QATConfig,
                                     RoundingConfig, Stage1Config, WeightsConfig)
from gplq_ros.onboard.packing import pack_int4, unpack_int4
from gplq_ros.offline.primitives import (ActQuantizer, dequantize_weight, fake_quant, fake_quant_reference,
                                         weight_codes, weight_scales)
from gplq_ros.offline.spec import QuantSpec
from gplq_ros.onboard.settings import config_type, options_of, settings_of


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
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)     # float64: the same math, other association
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
    assert errs['mse'] <= errs['minmax']          # ratio 1 (min-max) is one of the MSE search's candidates


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
        CalibConfig(loss=LossConfig(beta=-1))
    with pytest.raises(ValueError, match="--method 'adaround'"):
        CalibConfig.from_options(method='adaround')
    with pytest.raises(ValueError, match='CalibConfig.rounding=.*must be a RoundingConfig'):
        CalibConfig(rounding=QATConfig(steps=3))


CONFIGS = {QuantSpec: {}, CalibConfig: {}, LossConfig: {}, Stage1Config: {}, WeightsConfig: {},
           MixedPrecisionConfig: {'max_8bit_fraction': 0.25}, RoundingConfig: {'iters': 10}, QATConfig: {'steps': 10},
           CompensationConfig: {'rank': 8}}


@pytest.mark.parametrize('cls', list(CONFIGS), ids=lambda c: c.__name__)
def test_ranges_and_choices_live_in_the_field_metadata(cls):
    """Every numeric setting has a range and every string setting its choices in the field's
    metadata, and construction checks exactly those: the bounds and choices pass, a step
    outside fails naming the field."""
    def make(name, value):
        return cls(**dict(CONFIGS[cls], **{name: value}))
    for s in settings_of(cls):
        hint = typing.get_type_hints(cls)[s.name]
        kind = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint   # Optional[X]
        if kind in (int, float) and s.name != 'seed':
            assert s.range is not None or s.choices is not None, f'{cls.__name__}.{s.name}: no range'
        if kind is str:
            assert s.choices is not None, f'{cls.__name__}.{s.name}: no choices'
        if s.range is not None:
            inside, outside = s.range, (s.range[0] - 1, s.range[1] + 1)
        else:
            inside, outside = s.choices or (), ('nope',) if s.choices else ()
        for value in (v for v in inside if v not in (math.inf, -math.inf)):
            make(s.name, value)
        for value in (v for v in outside if v not in (math.inf, -math.inf)):
            with pytest.raises(ValueError, match=rf'{cls.__name__}\.{s.name}='):
                make(s.name, value)


def _leaf_paths(cls, path=()):
    for s in settings_of(cls):
        sub = config_type(cls, s.name)
        yield from _leaf_paths(sub, path + (s.name,)) if sub else [path + (s.name,)]


def test_cli_options_come_from_the_config_dataclasses():
    """gplq_calibrate's options are generated from QuantSpec and CalibConfig (its stages'
    sub-configs included): no option, the dataclass defaults; every setting has an option;
    '--group-size 0' means per output channel."""
    import argparse

    from gplq_ros.tools.common import add_config_arguments, config_from_args
    ap = argparse.ArgumentParser()
    add_config_arguments(ap, QuantSpec)
    add_config_arguments(ap, CalibConfig)
    args = ap.parse_args([])
    assert config_from_args(QuantSpec, args) == QuantSpec() and config_from_args(CalibConfig, args) == CalibConfig()
    opts = {a.dest for a in ap._actions}
    for cls in (QuantSpec, CalibConfig):
        assert {o.name for o in options_of(cls)} <= opts
    for cls in (QuantSpec, CalibConfig):
        assert set(_leaf_paths(cls)) == {o.path for o in options_of(cls) if o.path}
    args = ap.parse_args(['--group-size', '0', '--keep-8bit', 'blocks.9.attn.qkv', '--epochs', '3', '--pca-final'])
    spec, cfg = config_from_args(QuantSpec, args), config_from_args(CalibConfig, args)
    assert spec.group_size is None and spec.keep_8bit == ['blocks.9.attn.qkv']
    assert cfg.stage1.epochs == 3 and cfg.loss.pca_final and cfg.method == 'gplq'
    cfg = config_from_args(CalibConfig, ap.parse_args(['--method', 'minmax']))
    assert cfg.method == 'minmax' and cfg.stage1 is None and cfg.init == 'minmax'
    assert config_from_args(QuantSpec, ap.parse_args(['--group-size', '32'])).group_size == 32
    with pytest.raises(SystemExit):
        ap.parse_args(['--method', 'nope'])
    with pytest.raises(ValueError, match='epochs'):
        config_from_args(CalibConfig, ap.parse_args(['--epochs', '-1']))


STAGES = [('mixed_precision', MixedPrecisionConfig, 'max_8bit_fraction', 0.25, 'sensitivity_crops', 8),
          ('rounding', RoundingConfig, 'rounding_iters', 200, 'rounding_batch', 4),
          ('qat', QATConfig, 'qat_steps', 64, 'qat_lr', 1e-4),
          ('compensation', CompensationConfig, 'compensation_rank', 32, 'compensation_crops', 16)]


@pytest.mark.parametrize('stage, cls, switch, value, other, other_value', STAGES, ids=[s[0] for s in STAGES])
def test_an_optional_stage_is_a_subconfig_its_switch_option_turns_on(stage, cls, switch, value, other, other_value):
    """None = off (no magic zero in the config); the option names are the ones users typed:
    '--rounding-iters 200' turns the rounding on, '--rounding-iters 0' keeps it off, a
    setting of the stage without its switch, or with the switch at 0, is refused naming both."""
    import argparse

    from gplq_ros.tools.common import add_config_arguments, config_from_args
    ap = argparse.ArgumentParser()
    add_config_arguments(ap, CalibConfig)

    def cfg(*argv):
        return config_from_args(CalibConfig, ap.parse_args([str(a) for a in argv]))
    flag, other_flag = '--' + switch.replace('_', '-'), '--' + other.replace('_', '-')
    field = {o.name: o.path[-1] for o in options_of(CalibConfig) if o.path}
    assert getattr(CalibConfig(), stage) is None and getattr(cfg(), stage) is None
    assert getattr(cfg(flag, 0), stage) is None
    assert getattr(cfg(flag, value), stage) == cls(**{field[switch]: value})
    assert getattr(cfg(flag, value, other_flag, other_value), stage) == \
        cls(**{field[switch]: value, field[other]: other_value})
    with pytest.raises(ValueError, match=f'{other_flag} needs {flag}'):
        cfg(other_flag, other_value)
    with pytest.raises(ValueError, match=f'{other_flag} and {flag} 0 contradict each other'):
        cfg(flag, 0, other_flag, other_value)
    assert CalibConfig.from_options(**{switch: value}) == cfg(flag, value)


def test_stage1_off_is_the_statistics_only_methods():
    assert CalibConfig().method == 'gplq' and CalibConfig().stage1 == Stage1Config(epochs=1)
    for method in ('minmax', 'percentile'):
        cfg = CalibConfig.from_options(method=method)
        assert cfg == CalibConfig(stage1=None, init=method) and cfg.method == method
    assert CalibConfig.from_options(epochs=0).stage1 is None
    assert CalibConfig.from_options(method='gplq', init='percentile') == CalibConfig(init='percentile')


@pytest.mark.parametrize('argv, named', [
    (['--bits', 'w4a8', '--weight-bits', '8'], ('--bits', '--weight-bits')),
    (['--bits', 'w4a8', '--act-bits', '4'], ('--bits', '--act-bits')),
    (['--method', 'minmax', '--epochs', '3'], ('--method minmax', '--epochs')),
    (['--method', 'percentile', '--init', 'minmax'], ('--method percentile', '--init minmax')),
    (['--method', 'gplq', '--epochs', '0'], ('--method gplq', '--epochs 0')),
])
def test_contradicting_calibrate_options_are_refused_naming_both(argv, named, capsys, tmp_path):
    """gplq_calibrate refuses them before any work (--bits used to override --weight-bits)."""
    from gplq_ros.tools import calibrate
    with pytest.raises(SystemExit) as e:
        calibrate.main(argv + ['--out', str(tmp_path / 'never.safetensors')])
    err = capsys.readouterr().err
    assert e.value.code == 2 and 'contradict each other' in err and all(n in err for n in named), err
    assert not (tmp_path / 'never.safetensors').exists()


# CalibConfig version 1 (one flat dataclass; magic zeros for the stages off) as artifacts and
# reports made before the stages were split store it: offline.api.BEST_CALIBRATION (the
# cached 'best' artifact ``make demo --calibration best`` reuses), BEST_CALIBRATION_CUDA and the default
V1_COMMON = {'method': 'gplq', 'epochs': 1, 'crops': 256, 'batch': 4, 'lr': 0.01, 'init': 'minmax', 'init_crops': 32,
             'alpha': 'depth', 'beta': 1.0, 'lambda_corner': 0.1, 'lambda_edge': 0.05, 'lambda_reg': 0.01,
             'edge_threshold': 0.5, 'corner_top_k': 20, 'pca_final': False, 'pca_variance': 0.6, 'gptq_crops': 64,
             'seed': 0, 'device': 'cpu', 'eps_basin': 0.1, 'enforce_basin': False, 'gamma_align': 0.8,
             'align_batches': 2, 'max_8bit_fraction': 0.0, 'target_cosine': None, 'sensitivity_crops': 16,
             'rounding_iters': 0, 'rounding_crops': 128, 'rounding_batch': 8, 'rounding_lr': 0.05,
             'rounding_lambda': 1.0, 'qat_steps': 0, 'qat_lr': 1e-05, 'compensation_rank': 0, 'compensation_crops': 32,
             'version': 1}
V1_ONBOARD = dict(V1_COMMON, max_8bit_fraction=0.25, rounding_iters=400, rounding_crops=64, rounding_batch=4)
# the 'fast' onboard recipe (#21) its artifact file name stands for (onboard.paths.ONBOARD_ARTIFACTS)
FAST_RECORD = json.loads(
    '{"crops": 64, "augment": true, "budget_s": 300.0, "batch": 4, "seed": 0, "device": "cpu", "init": '
    '"minmax", "init_crops": 32, "lr": 0.01, "gamma_align": 0.8, "align_batches": 2, "loss": {"alpha": '
    '"depth", "beta": 1.0, "lambda_corner": 0.1, "lambda_edge": 0.05, "lambda_reg": 0.01, "edge_threshold": '
    '0.5, "corner_top_k": 20, "pca_final": false, "pca_variance": 0.6}, "stage1": {"epochs": 1, "lr_schedule":'
    ' "cosine"}, "weights": {"gptq_crops": 64, "eps_basin": 0.1, "enforce_basin": false, "bias_correction": '
    'true, "bias_crops": 32}, "mixed_precision": {"max_8bit_fraction": 0.25, "target_cosine": null, '
    '"sensitivity_crops": 8, "objective": "outputs"}, "rounding": null, "qat": null, "compensation": null, '
    '"version": 2}')
V1_ONBOARD_CUDA = dict(V1_ONBOARD, device='cuda', rounding_iters=2000, rounding_crops=128, rounding_batch=32)


def test_calibration_config_versions():
    """Version-1 records read as the same calibration; version 2 round-trips through JSON;
    other versions are refused by name."""

    from gplq_ros.offline.api import BEST_CALIBRATION, BEST_CALIBRATION_CUDA, ONBOARD_CALIBRATION
    constant = Stage1Config(lr_schedule='constant')   # version 1 had no step decay
    assert CalibConfig.from_dict(V1_ONBOARD) == replace(BEST_CALIBRATION, stage1=constant)
    assert CalibConfig.from_dict(V1_ONBOARD_CUDA) == replace(BEST_CALIBRATION_CUDA, stage1=constant)
    assert CalibConfig.from_dict(V1_COMMON) == CalibConfig(stage1=constant)
    minmax_qat = CalibConfig.from_dict(dict(V1_COMMON, method='minmax', qat_steps=128, compensation_rank=16))
    # the record's own QAT step (1e-5, the default then), not today's default
    assert minmax_qat == CalibConfig(stage1=None, qat=QATConfig(steps=128, lr=1e-5),
                                     compensation=CompensationConfig(rank=16))
    assert CalibConfig.from_dict(dict(V1_COMMON, method='percentile')).method == 'percentile'
    full = CalibConfig.from_options(method='gplq', epochs=2, max_8bit_fraction=0.5, target_cosine=0.99,
                                    rounding_iters=5, qat_steps=3, compensation_rank=4, beta=0.5)
    assert full.to_dict()['version'] == 2 and full.to_dict()['rounding']['iters'] == 5
    assert CalibConfig.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    assert CalibConfig.from_dict(json.loads(json.dumps(ONBOARD_CALIBRATION.to_dict()))) == ONBOARD_CALIBRATION
    with pytest.raises(ValueError, match='version 3 is not supported'):
        CalibConfig.from_dict(dict(full.to_dict(), version=3))


def test_default_onboard_artifacts_are_still_found_by_their_paths():
    """A cached onboard artifact is keyed by its file name only (ensure_onboard_models
    reuses any file there): each recipe's name and the calibration it stands for are
    unchanged. Changing a recipe means a new file name in onboard.paths.ONBOARD_ARTIFACTS
    (and the record here), so an artifact of the old recipe is never taken for the new."""
    from gplq_ros.offline.api import BEST_CALIBRATION, BEST_SPEC, ONBOARD_RECIPES
    from gplq_ros.onboard.paths import default_onboard_artifact
    assert default_onboard_artifact('best').name == 'w4a8_gplq_rot_qk_ao_mp25_round.safetensors'
    assert default_onboard_artifact().name == 'w4a8_gplq_rot_qk_mult32_mp25out_aug_bc_fast.safetensors'
    assert BEST_CALIBRATION.method == 'gplq' and BEST_SPEC.tag == 'w4a8'
    constant = Stage1Config(lr_schedule='constant')
    assert CalibConfig.from_dict(V1_ONBOARD) == replace(BEST_CALIBRATION, stage1=constant)
    assert ONBOARD_RECIPES['best'].spec == BEST_SPEC and ONBOARD_RECIPES['best'].cpu == BEST_CALIBRATION
    fast = ONBOARD_RECIPES['fast']
    assert fast.spec.to_dict() == dict(BEST_SPEC.to_dict(), weight_grid='multiplier', grid_group=32)
    assert fast.cpu.to_dict() == FAST_RECORD
    with pytest.raises(ValueError, match="recipe='slow': one of"):
        default_onboard_artifact('slow')
