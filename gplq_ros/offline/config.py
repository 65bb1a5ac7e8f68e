"""Calibration configuration: validated, versioned dataclasses, one per stage (no torch).

``CalibConfig`` holds what the stages share (crops, batch, seed, device, the initial
activation quantizers and their learning step, the gradient-alignment check) and one
sub-config per stage. An optional stage is None when it is off::

  loss             LossConfig                    the GPLQ objective: stage 1 (and QAT) learn on it
  stage1           Stage1Config or None          learned activation quantizers (on by default;
                                                 None: the initial statistics stay,
                                                 ``--method minmax|percentile`` or ``--epochs 0``)
  weights          WeightsConfig                 stage 2: GPTQ / round to nearest, basin
  mixed_precision  MixedPrecisionConfig or None  8-bit Linears by sensitivity (``--max-8bit-fraction F``)
  rounding         RoundingConfig or None        learned rounding (``--rounding-iters N``)
  qat              QATConfig or None             QAT baseline (``--qat-steps N``)
  compensation     CompensationConfig or None    per-block linear compensation (``--compensation-rank R``)

Ranges and choices live in the fields' metadata (``onboard.settings.setting``) and are
checked from there. The command-line options (``tools.common.add_config_arguments``) keep
their flat names: ``RoundingConfig.iters`` is ``--rounding-iters``, and giving it turns the
rounding on; its value 0 (off, as before) with another rounding option is refused, as is
``--rounding-batch`` without ``--rounding-iters``. ``CalibConfig.from_options(**flat)``
builds a config from those names in Python (``method`` included).

Version 2 (this one) stores the sub-configs nested; ``CalibConfig.from_dict`` also reads the
flat version-1 records of older artifacts and reports.
"""
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Optional

from gplq_ros.onboard.settings import Setting, build, config_type, options_of, setting, validate

CALIB_VERSION = 2
METHODS = ('gplq', 'minmax', 'percentile')
INITS = ('minmax', 'percentile')
ALPHAS = ('depth', 'uniform')
DEVICES = ('cpu', 'cuda')
INF = math.inf


@dataclass(frozen=True)
class LossConfig:
    """The GPLQ loss ``L = L_mimic + L_corner + L_edge + L_reg`` (``offline.losses``):

    * ``alpha``: per-layer weights of the 12 block outputs; 'depth' = alpha_i proportional
      to (i + 1) (later blocks, closer to the heads, count more), normalized to sum 1;
      'uniform' = 1/12. Each layer's error is divided by the FP32 layer's mean power so
      that layers of different magnitude are comparable.
    * ``beta``: spatial weight ``w = 1 + beta * E / max E`` from the FP32 map's
      EdgeMagnitude E (per image, per layer).
    * ``lambda_corner`` / ``lambda_edge`` / ``lambda_reg``: 0.1 / 0.05 / 0.01.
    * ``edge_threshold``: edge positions are where E / max E > 0.5 (final map).
    * ``pca_final``: stage 1 adds GPLQ's PCA-projected final-feature term (QAT does not).
    """
    alpha: str = setting('depth', 'per-block weights of L_mimic', choices=ALPHAS)
    beta: float = setting(1.0, 'spatial weight 1 + beta * E / max E', range=(0.0, 100.0))
    lambda_corner: float = setting(0.1, 'weight of the Harris-corner term', range=(0.0, INF))
    lambda_edge: float = setting(0.05, 'weight of the edge term', range=(0.0, INF))
    lambda_reg: float = setting(0.01, 'weight of the quantizer regularization term', range=(0.0, INF))
    edge_threshold: float = setting(0.5, 'edge positions: E / max E above this', range=(0.001, 0.999))
    corner_top_k: int = setting(20, 'FP32 corners in the corner term', range=(1, 1000))
    pca_final: bool = setting(False, "add GPLQ's PCA-projected final-feature term (stage 1)")
    pca_variance: float = setting(0.6, 'variance kept by the PCA term', range=(0.01, 1.0))

    def __post_init__(self):
        validate(self)


LR_SCHEDULES = ('cosine', 'constant')
MP_OBJECTIVES = ('final', 'outputs')


@dataclass(frozen=True)
class Stage1Config:
    """Stage 1 (``offline.calibration``): the activation quantizers' s, z learned on the loss,
    weights FP32 and frozen."""
    epochs: int = setting(1, 'stage-1 epochs over the crops (0: no stage 1, the initial statistics stay)',
                          range=(1, 100), none=0)
    lr_schedule: str = setting('cosine', 'stage-1 step size over the run: cosine = decays from lr to 0, so the '
                               'last steps settle instead of leaving the quantizers wherever the last noisy '
                               'steps put them; constant = lr throughout (version-1 records)',
                               choices=LR_SCHEDULES)

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class WeightsConfig:
    """Stage 2 (``offline.weight_ptq``): the weights quantized as the ``QuantSpec`` says; the
    basin drift ||Wq - W|| / ||W|| measured per layer."""
    gptq_crops: int = setting(64, 'crops for the GPTQ Hessians', range=(1, INF))
    eps_basin: float = setting(0.1, 'basin bound on ||Wq - W|| / ||W|| per layer', range=(1e-6, INF))
    enforce_basin: bool = setting(False, 'layers drifting > eps_basin get 8-bit weights')
    bias_correction: bool = setting(False, 'closed-form bias correction of every quantized Linear after the weights '
                                    'are final: the mean output error on the calibration crops is added to its '
                                    'bias (offline.weight_ptq.correct_biases)')
    bias_crops: int = setting(32, 'crops for the bias correction', range=(1, INF))

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class MixedPrecisionConfig:
    """Mixed precision (``offline.mixed_precision``), after stage 2: the most sensitive Linears
    get 8-bit weights."""
    max_8bit_fraction: float = setting(help='mixed precision: the most sensitive Linears (measured) get 8-bit '
                                       'weights, up to this fraction of the Linear weights (0: off)',
                                       range=(1e-6, 1.0), none=0)
    target_cosine: Optional[float] = setting(None, 'mixed precision: stop adding 8-bit Linears once the '
                                             'calibration crops reach this final-token cosine', range=(1e-6, 1.0))
    sensitivity_crops: int = setting(16, 'crops for the layer sensitivity', range=(1, INF))
    objective: str = setting('final', "what the sensitivity and target_cosine measure: final = the final block's "
                             "tokens' cosine to FP32; outputs = the mean cosine of the graph's two outputs, the "
                             "heads' tokens and the place descriptor's VLAD features", choices=MP_OBJECTIVES)

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class RoundingConfig:
    """Learned rounding (``offline.rounding``) of the quantized weights by block
    reconstruction, after mixed precision and QAT."""
    iters: int = setting(help='learned rounding of the quantized weights by block reconstruction '
                         '(offline.rounding): Adam steps per block (0: off, the GPTQ / nearest codes of stage 2 '
                         'stay)', range=(1, 1_000_000), none=0)
    crops: int = setting(128, 'crops for the learned rounding', range=(1, INF))
    batch: int = setting(8, 'crops per learned-rounding step', range=(1, 1024))
    lr: float = setting(0.05, 'Adam step of the learned-rounding variables', range=(1e-6, 10.0))
    lambda_: float = setting(1.0, 'weight of the term that drives roundings to 0/1', range=(0.0, INF))

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class QATConfig:
    """The QAT baseline (``offline.qat``), after stage 2 and mixed precision."""
    steps: int = setting(help='QAT baseline (offline.qat): train weights, weight scales and activation quantizers '
                         'end to end for this many steps after stage 2 (0: off; with --method minmax: an '
                         'LSQ-style QAT run)', range=(1, 10_000_000), none=0)
    lr: float = setting(1e-6, 'QAT step of the weights (Adam: each weight moves about this far per step; 4-bit '
                        'steps are 5e-3-1e-2 here; scales at the same relative rate)', range=(1e-9, 1.0))

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class CompensationConfig:
    """Per-block linear compensation (``offline.compensation``, QwT-style, closed form), last."""
    rank: int = setting(help='per-block linear compensation of the quantization error (QwT-style, closed form) '
                        'of this rank (0: off)', range=(1, 384), none=0)
    crops: int = setting(32, 'crops for fitting the compensation', range=(1, INF))

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class CalibConfig:
    """GPLQ calibration: the shared settings and one sub-config per stage (module docstring).

    ``method`` (a property) is 'gplq' with stage 1, else the initial statistics ('minmax'
    or 'percentile'); it names the default artifact (``<tag>_<method>.safetensors``).
    """
    crops: int = setting(256, 'random calibration crops (224 px)', range=(1, 100_000))
    augment: bool = setting(False, 'calibration crops as a drone sees the ground (offline.data.DRONE_POLICY): any '
                            'heading, 0.6-1.6x scale, brightness/contrast/gamma/saturation jitter, slight blur')
    budget_s: Optional[float] = setting(None, 'time budget of the calibration in seconds (None: none): stage 1 '
                                        'takes at most half of it and the learned rounding what is left after '
                                        'the fixed stages; each stage says when the budget shortened it',
                                        range=(1.0, INF))
    batch: int = setting(4, 'crops per step', range=(1, 256))
    seed: int = setting(0, 'crops and data order')
    device: str = setting('cpu', 'torch device for calibration', choices=DEVICES)
    init: str = setting('minmax', 'statistics of the initial activation s, z (percentile measured worse); '
                        'without stage 1 they stay', choices=INITS)
    init_crops: int = setting(32, 'crops for the initial statistics', range=(1, INF))
    lr: float = setting(0.01, 'relative step of the activation quantizers (stage 1 and QAT): scales move by ~lr '
                        '* s0 per step', range=(1e-6, 1.0))
    gamma_align: float = setting(0.8, 'gradient-alignment threshold (warning below)', range=(-1.0, 1.0))
    align_batches: int = setting(2, 'batches in the gradient-alignment check', range=(1, 100))
    loss: LossConfig = setting(help='the GPLQ loss (stage 1; QAT trains on it too)', default_factory=LossConfig)
    stage1: Optional[Stage1Config] = setting(help='stage 1: learned activation quantizers (None: the initial '
                                             'statistics stay)', default_factory=Stage1Config)
    weights: WeightsConfig = setting(help='stage 2: weight quantization', default_factory=WeightsConfig)
    mixed_precision: Optional[MixedPrecisionConfig] = setting(None, 'mixed precision (off unless '
                                                              '--max-8bit-fraction is given)')
    rounding: Optional[RoundingConfig] = setting(None, 'learned rounding (off unless --rounding-iters is given)',
                                                 prefix='rounding_')
    qat: Optional[QATConfig] = setting(None, 'QAT baseline (off unless --qat-steps is given)', prefix='qat_')
    compensation: Optional[CompensationConfig] = setting(None, 'linear compensation (off unless '
                                                         '--compensation-rank is given)', prefix='compensation_')
    version: int = CALIB_VERSION

    # an option that is not a field: --method X (from_options translates it)
    SHORTHANDS = (Setting('method', 'gplq', 'gplq = learned stage 1; minmax / percentile = the initial '
                          'statistics only (--init X, no stage 1)', choices=METHODS),)

    def __post_init__(self):
        if self.version != CALIB_VERSION:
            raise ValueError(f'CalibConfig.version={self.version!r}: this gplq_ros makes version {CALIB_VERSION} '
                             '(CalibConfig.from_dict reads older records)')
        validate(self)

    @property
    def method(self) -> str:
        return 'gplq' if self.stage1 is not None else self.init

    @classmethod
    def from_options(cls, strict: bool = True, **options) -> 'CalibConfig':
        """The config from flat option values, named as on the command line (``rounding_iters=400``,
        ``method='minmax'``; None = not given). ``--method minmax|percentile`` is ``--init X``
        without stage 1; with a stage-1 option or another ``--init`` it is refused (``strict``;
        otherwise the method wins, as in version-1 records)."""
        options = {k: v for k, v in options.items() if v is not None}
        method = options.pop('method', None)
        if method is not None and method not in METHODS:
            raise ValueError(f'--method {method!r}: must be one of {list(METHODS)}')
        if method == 'gplq' and strict and options.get('epochs') == 0:
            raise ValueError('--method gplq and --epochs 0 contradict each other: --epochs 0 means no stage 1')
        if method in INITS:
            if strict:
                stage1 = [o.flag for o in options_of(cls) if o.group == ('stage1',) and o.name in options]
                if stage1:
                    raise ValueError(f'--method {method} and {stage1[0]} contradict each other: --method {method} '
                                     'means no stage 1')
                if options.get('init', method) != method:
                    raise ValueError(f'--method {method} and --init {options["init"]} contradict each other')
            options.update(init=method, epochs=0)
        return build(cls, options, strict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> 'CalibConfig':
        """The config ``to_dict`` wrote (version 2), or a flat version-1 record (artifacts and
        reports made before the stages were split: the magic zeros read as stages off)."""
        version = d.get('version')
        if version == 1:    # stage 1 had a constant step size then
            cfg = cls.from_options(strict=False, **{k: v for k, v in d.items() if k != 'version'})
            return cfg if cfg.stage1 is None else replace(cfg, stage1=replace(cfg.stage1, lr_schedule='constant'))
        if version != CALIB_VERSION:
            raise ValueError(f'calibration config version {version!r} is not supported (this gplq_ros reads '
                             f'versions 1 and {CALIB_VERSION})')
        kw = dict(d)
        for f in fields(cls):
            sub = config_type(cls, f.name)
            if sub is not None and kw.get(f.name) is not None:
                kw[f.name] = sub(**kw[f.name])
        return cls(**kw)


def alpha_weights(kind: str, layers: int) -> list:
    w = [float(i + 1) for i in range(layers)] if kind == 'depth' else [1.0] * layers
    total = sum(w)
    return [x / total for x in w]
