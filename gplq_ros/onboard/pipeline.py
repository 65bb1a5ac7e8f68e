"""FP32 reference pipeline: image -> patch features -> boundary, corners, VLAD descriptor.

``PipelineConfig`` and ``run_heads`` need only numpy: the onboard engine runs them on ONNX
Runtime outputs, ``offline.reference.ReferencePipeline`` on the torch extractor's.

Feature choices (documented in README):
* boundary map and corners use the **final block's tokens after the final LayerNorm**
  (block 11, ``token``): the most semantic map, where a field border or forest edge is
  a change of token direction.
* the place descriptor uses **block 9, facet ``value``**: AnyLoc found intermediate-late
  layers (31 of 40 in ViT-G, ~0.78 depth) and the ``value`` facet best for VLAD place
  recognition; 9 of 12 blocks is the same relative depth in ViT-S.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from threadpoolctl import threadpool_limits

from gplq_ros.onboard.fileformat import check_fields
from gplq_ros.onboard import heads
from gplq_ros.onboard.preprocess import Prepared

CONFIG_VERSION = 1


@dataclass(frozen=True)
class PipelineConfig:
    long_side: int = 224
    feature_block: int = 11
    vlad_block: int = 9
    vlad_facet: str = 'value'
    top_k: int = 50
    nms_radius: int = 1
    harris_k: float = 0.04
    harris_sigma: float = 1.0
    corner_rel_threshold: float = 0.01
    version: int = CONFIG_VERSION

    def __post_init__(self):
        checks = [
            ('version', self.version == CONFIG_VERSION),
            ('long_side', 14 <= self.long_side <= 4096),
            ('feature_block', 0 <= self.feature_block <= 11),
            ('vlad_block', 0 <= self.vlad_block <= 11),
            ('vlad_facet', self.vlad_facet in ('token', 'query', 'key', 'value')),
            ('top_k', 1 <= self.top_k <= 10000),
            ('nms_radius', 1 <= self.nms_radius <= 10),
            ('harris_k', 0.0 < self.harris_k < 0.25),
            ('harris_sigma', 0.0 <= self.harris_sigma <= 5.0),
            ('corner_rel_threshold', 0.0 <= self.corner_rel_threshold < 1.0),
        ]
        check_fields(self, checks)

    @property
    def keys(self):
        return ((self.feature_block, 'token'), (self.vlad_block, self.vlad_facet))


@dataclass
class Outputs:
    image_hw: Tuple[int, int]
    input_hw: Tuple[int, int]
    grid_hw: Tuple[int, int]
    tokens: np.ndarray                 # (gh, gw, C) float32, feature_block tokens
    boundary: np.ndarray               # (gh, gw) float32 in [0, 1]
    boundary_full: np.ndarray          # (H, W) float32 in [0, 1], original image size
    harris: np.ndarray                 # (gh, gw) float32 Harris response
    corners: heads.Corners             # patch-grid corners, best first
    corners_px: np.ndarray             # (n, 2) float32 (x, y) in original image pixels
    descriptor: Optional[np.ndarray]   # (K*C,) float32 unit VLAD, None without vocabulary


def single_thread_blas() -> None:
    """Hold numpy's BLAS to one thread in this process (torch and ONNX Runtime keep theirs).

    The heads' matrices are tiny; OpenBLAS's idle threads spinning after them slowed the
    next backbone forward on 2 cores from 79 to 132 ms (torch reference pipeline, measured).
    Limiting per call did not help (re-enabling the threads restarts the spinning)."""
    threadpool_limits(limits=1, user_api='blas')


def run_heads(cfg: PipelineConfig, prep: Prepared, tokens: np.ndarray,
              vlad_features: np.ndarray, centers: Optional[np.ndarray]) -> Outputs:
    """Heads on (gh*gw, C) token arrays; shared by the torch and ONNX Runtime paths."""
    gh, gw = prep.grid_hw
    grid = tokens.reshape(gh, gw, -1).astype(np.float32)
    sxx, syy, sxy = heads.structure_sums(*heads.feature_gradients(grid))   # once for both heads
    boundary = heads.boundary_from_sums(sxx, syy)
    harris = heads.harris_from_sums(sxx, syy, sxy, cfg.harris_k, cfg.harris_sigma)
    corners = heads.top_corners(harris, cfg.top_k, cfg.nms_radius, cfg.corner_rel_threshold)
    desc = heads.vlad(vlad_features.reshape(gh * gw, -1), centers) if centers is not None else None
    return Outputs(prep.orig_hw, prep.input_hw, (gh, gw), grid, boundary,
                   heads.upsample(boundary, prep.orig_hw), harris, corners,
                   corners.to_pixels((gh, gw), prep.orig_hw), desc)
