"""Drift of the onboard (quantized) outputs against the FP32 reference, and the
OK/WARN/ERROR decision the monitor publishes on /diagnostics.

Metrics per checked frame (the same definitions as the offline fidelity report):
* ``descriptor_cosine``: cosine of the two unit VLAD descriptors;
* ``boundary_ssim``: SSIM of the boundary maps (both in [0, 1], compared at the received
  map's resolution);
* ``corner_repeatability``: fraction of reference corners with a received corner within
  one patch cell (Chebyshev distance in image pixels).
"""
import enum
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import cv2
import numpy as np

from ..gplq.metrics import ssim

METRICS = ('descriptor_cosine', 'boundary_ssim', 'corner_repeatability')


class Level(enum.IntEnum):
    """diagnostic_msgs/DiagnosticStatus levels."""
    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3

    @classmethod
    def of(cls, status) -> 'Level':
        """The level of a DiagnosticStatus (``byte``: bytes from rclpy, an int from rosbags)."""
        lv = status.level
        return cls(lv[0] if isinstance(lv, (bytes, bytearray)) else int(lv))


def corner_repeatability_px(ref_px: np.ndarray, got_px: np.ndarray, radius_px: float) -> float:
    ref_px, got_px = np.asarray(ref_px, np.float64).reshape(-1, 2), np.asarray(got_px, np.float64).reshape(-1, 2)
    if len(ref_px) == 0:
        return 1.0
    if len(got_px) == 0:
        return 0.0
    d = np.abs(ref_px[:, None, :] - got_px[None, :, :]).max(axis=2)
    return float(np.mean(d.min(axis=1) <= radius_px))


def compare(ref, boundary: Optional[np.ndarray], corners_px: Optional[np.ndarray],
            descriptor: Optional[np.ndarray]) -> Dict[str, float]:
    """``ref``: a ``model.pipeline.Outputs`` of the FP32 engine on the same frame;
    ``corners_px``: (N, 2+) rows starting with u, v (``layout.decode_corners`` gives
    u, v, response)."""
    out = {}
    if descriptor is not None and ref.descriptor is not None:
        if descriptor.shape != ref.descriptor.shape:
            raise ValueError(f'descriptor length {descriptor.size} != reference {ref.descriptor.size}: '
                             'the feature node and the monitor use different vocabularies')
        out['descriptor_cosine'] = float(np.dot(descriptor.astype(np.float64), ref.descriptor.astype(np.float64)))
    if boundary is not None:
        r = ref.boundary if boundary.shape == ref.boundary.shape else \
            cv2.resize(ref.boundary_full, (boundary.shape[1], boundary.shape[0]), interpolation=cv2.INTER_AREA)
        out['boundary_ssim'] = ssim(r, boundary)
    if corners_px is not None:
        cell = max(ref.image_hw[0] / ref.grid_hw[0], ref.image_hw[1] / ref.grid_hw[1])
        out['corner_repeatability'] = corner_repeatability_px(ref.corners_px, np.asarray(corners_px)[:, :2], cell)
    return out


@dataclass
class DriftBounds:
    descriptor_cosine: float = 0.7
    boundary_ssim: float = 0.8
    corner_repeatability: float = 0.6
    consecutive: int = 3

    def __post_init__(self):
        for k in METRICS:
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f'{k}={v}: must be in [0, 1]')
        if self.consecutive < 1:
            raise ValueError(f'consecutive={self.consecutive}: must be >= 1')


@dataclass
class DriftMonitor:
    """Counts consecutive checks with any metric below its bound: ERROR once there have been
    ``bounds.consecutive`` in a row, WARN for fewer, OK after a passing check."""
    bounds: DriftBounds = field(default_factory=DriftBounds)
    checks: int = 0
    failed_in_a_row: int = 0
    last: Dict[str, float] = field(default_factory=dict)
    last_failed: List[str] = field(default_factory=list)

    def update(self, metrics: Dict[str, float]) -> Level:
        self.checks += 1
        self.last = dict(metrics)
        self.last_failed = [k for k in METRICS if k in metrics and metrics[k] < getattr(self.bounds, k)]
        self.failed_in_a_row = self.failed_in_a_row + 1 if self.last_failed else 0
        return self.level

    @property
    def level(self) -> Level:
        if self.failed_in_a_row >= self.bounds.consecutive:
            return Level.ERROR
        return Level.WARN if self.failed_in_a_row else Level.OK
