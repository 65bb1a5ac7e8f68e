"""Calibration configuration: a validated, versioned dataclass (no torch)."""
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from gplq_ros.onboard.fileformat import check_fields

CALIB_VERSION = 1


def option(text: str, choices=None, none=None) -> dict:
    """Field metadata: the command-line help, choices and the option value meaning None
    (``tools.common.add_config_arguments`` builds the options from it)."""
    md = {'help': text}
    if choices:
        md['choices'] = choices
    if none is not None:
        md['none'] = none
    return md


@dataclass
class CalibConfig:
    """GPLQ calibration.

    Stage 1 loss ``L = L_mimic + L_corner + L_edge + L_reg`` (see ``gplq.losses``):
      * ``alpha``: per-layer weights of the 12 block outputs; 'depth' = alpha_i
        proportional to (i + 1) (later blocks, closer to the heads, count more), normalized
        to sum 1; 'uniform' = 1/12. Each layer's error is divided by the FP32 layer's mean
        power so that layers of different magnitude are comparable.
      * ``beta``: spatial weight ``w = 1 + beta * E / max E`` from the FP32 map's
        EdgeMagnitude E (per image, per layer).
      * ``lambda_corner`` / ``lambda_edge`` / ``lambda_reg``: 0.1 / 0.05 / 0.01.
      * ``edge_threshold``: edge positions are where E / max E > 0.5 (final map).
    """

    method: str = field(default='gplq', metadata=option('gplq = learned stage 1; minmax/percentile = statistics only',
                                                        ('gplq', 'minmax', 'percentile')))
    epochs: int = field(default=1, metadata=option('stage-1 epochs over the crops'))
    crops: int = field(default=256, metadata=option('random calibration crops (224 px)'))
    batch: int = field(default=4, metadata=option('crops per step'))
    lr: float = field(default=0.01, metadata=option('relative step: scales move by ~lr * s0 per step'))
    init: str = field(default='minmax', metadata=option('initial s, z (percentile measured worse)',
                                                        ('minmax', 'percentile')))
    init_crops: int = field(default=32, metadata=option('crops for the initial statistics'))
    alpha: str = field(default='depth', metadata=option('per-block weights of L_mimic', ('depth', 'uniform')))
    beta: float = field(default=1.0, metadata=option('spatial weight 1 + beta * E / max E'))
    lambda_corner: float = field(default=0.1, metadata=option('weight of the Harris-corner term'))
    lambda_edge: float = field(default=0.05, metadata=option('weight of the edge term'))
    lambda_reg: float = field(default=0.01, metadata=option('weight of the quantizer regularization term'))
    edge_threshold: float = field(default=0.5, metadata=option('edge positions: E / max E above this'))
    corner_top_k: int = field(default=20, metadata=option('FP32 corners in the corner term'))
    pca_final: bool = field(default=False, metadata=option("add GPLQ's PCA-projected final-feature term"))
    pca_variance: float = field(default=0.6, metadata=option('variance kept by the PCA term'))
    gptq_crops: int = field(default=64, metadata=option('crops for the GPTQ Hessians'))
    seed: int = field(default=0, metadata=option('crops and data order'))
    device: str = field(default='cpu', metadata=option('torch device for calibration', ('cpu', 'cuda')))
    eps_basin: float = field(default=0.1, metadata=option('basin bound on ||Wq - W|| / ||W|| per layer'))
    enforce_basin: bool = field(default=False, metadata=option('layers drifting > eps_basin get 8-bit weights'))
    gamma_align: float = field(default=0.8, metadata=option('gradient-alignment threshold (warning below)'))
    align_batches: int = field(default=2, metadata=option('batches in the gradient-alignment check'))
    max_8bit_fraction: float = field(default=0.0, metadata=option(
        'mixed precision: the most sensitive Linears (measured) get 8-bit weights, up to this fraction of the '
        'Linear weights (0: off)'))
    target_cosine: Optional[float] = field(default=None, metadata=option(
        'mixed precision: stop adding 8-bit Linears once the calibration crops reach this final-token cosine'))
    sensitivity_crops: int = field(default=16, metadata=option('crops for the layer sensitivity'))
    rounding_iters: int = field(default=0, metadata=option(
        'learned rounding of the quantized weights by block reconstruction (offline.rounding): Adam steps per '
        'block; 0: off (the GPTQ / nearest codes of stage 2 stay)'))
    rounding_crops: int = field(default=128, metadata=option('crops for the learned rounding'))
    rounding_batch: int = field(default=8, metadata=option('crops per learned-rounding step'))
    rounding_lr: float = field(default=0.05, metadata=option('Adam step of the learned-rounding variables'))
    rounding_lambda: float = field(default=1.0, metadata=option('weight of the term that drives roundings to 0/1'))
    qat_steps: int = field(default=0, metadata=option(
        'QAT baseline (offline.qat): train weights, weight scales and activation quantizers end to end for this '
        'many steps after stage 2 (0: off; use with --method minmax for an LSQ-style QAT run)'))
    qat_lr: float = field(default=1e-5, metadata=option('QAT step of the weights (scales ~10x relative)'))
    compensation_rank: int = field(default=0, metadata=option(
        'per-block linear compensation of the quantization error (QwT-style, closed form) of this rank; 0: off'))
    compensation_crops: int = field(default=32, metadata=option('crops for fitting the compensation'))
    version: int = CALIB_VERSION

    def __post_init__(self):
        checks = [
            ('version', self.version == CALIB_VERSION),
            ('method', self.method in ('gplq', 'minmax', 'percentile')),
            ('epochs', 0 <= self.epochs <= 100),
            ('crops', 1 <= self.crops <= 100_000),
            ('batch', 1 <= self.batch <= 256),
            ('lr', 0 < self.lr <= 1),
            ('init', self.init in ('percentile', 'minmax')),
            ('init_crops', 1 <= self.init_crops),
            ('alpha', self.alpha in ('depth', 'uniform')),
            ('beta', 0 <= self.beta <= 100),
            ('lambda_corner', self.lambda_corner >= 0),
            ('lambda_edge', self.lambda_edge >= 0),
            ('lambda_reg', self.lambda_reg >= 0),
            ('edge_threshold', 0 < self.edge_threshold < 1),
            ('corner_top_k', 1 <= self.corner_top_k <= 1000),
            ('pca_variance', 0 < self.pca_variance <= 1),
            ('gptq_crops', 1 <= self.gptq_crops),
            ('device', self.device in ('cpu', 'cuda')),
            ('eps_basin', self.eps_basin > 0),
            ('gamma_align', -1 <= self.gamma_align <= 1),
            ('align_batches', 1 <= self.align_batches <= 100),
            ('max_8bit_fraction', 0.0 <= self.max_8bit_fraction <= 1.0),
            ('target_cosine', self.target_cosine is None or 0.0 < self.target_cosine <= 1.0),
            ('sensitivity_crops', 1 <= self.sensitivity_crops),
            ('rounding_iters', 0 <= self.rounding_iters <= 1_000_000),
            ('rounding_crops', 1 <= self.rounding_crops),
            ('rounding_batch', 1 <= self.rounding_batch <= 1024),
            ('rounding_lr', 0 < self.rounding_lr <= 10),
            ('rounding_lambda', self.rounding_lambda >= 0),
            ('qat_steps', 0 <= self.qat_steps <= 10_000_000),
            ('qat_lr', 0 < self.qat_lr <= 1),
            ('compensation_rank', 0 <= self.compensation_rank <= 384),
            ('compensation_crops', 1 <= self.compensation_crops),
        ]
        check_fields(self, checks)

    def to_dict(self) -> dict:
        return asdict(self)


def alpha_weights(kind: str, layers: int) -> list:
    w = [float(i + 1) for i in range(layers)] if kind == 'depth' else [1.0] * layers
    total = sum(w)
    return [x / total for x in w]


def resolve_device(name: str) -> str:
    if name == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError('--device cuda requested but torch.cuda.is_available() is False')
    return name
