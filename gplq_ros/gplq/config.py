"""Calibration configuration: a validated, versioned dataclass (no torch)."""
from dataclasses import asdict, dataclass

from ..fileformat import check_fields

CALIB_VERSION = 1


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

    method: str = 'gplq'             # gplq | minmax | percentile
    epochs: int = 1
    crops: int = 256
    batch: int = 4
    lr: float = 0.01                 # relative step: scales move by ~lr * s0 per step
    init: str = 'minmax'             # initial s, z: minmax | percentile (measured worse)
    init_crops: int = 32
    alpha: str = 'depth'
    beta: float = 1.0
    lambda_corner: float = 0.1
    lambda_edge: float = 0.05
    lambda_reg: float = 0.01
    edge_threshold: float = 0.5
    corner_top_k: int = 20
    pca_final: bool = False          # add GPLQ's PCA-projected final-feature term
    pca_variance: float = 0.6
    gptq_crops: int = 64
    seed: int = 0
    device: str = 'cpu'
    eps_basin: float = 0.1
    enforce_basin: bool = False
    gamma_align: float = 0.8
    align_batches: int = 2
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
        import torch
        if not torch.cuda.is_available():
            raise ValueError('--device cuda requested but torch.cuda.is_available() is False')
    return name
