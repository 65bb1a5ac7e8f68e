"""Drift of the onboard (quantized) outputs against the FP32 reference, and the
OK/WARN/ERROR decision the monitor publishes on /diagnostics.

Metrics per checked frame (the same definitions as the offline fidelity report):
* ``descriptor_cosine``: cosine of the two unit VLAD descriptors;
* ``boundary_ssim``: SSIM of the boundary maps (both in [0, 1], compared at the received
  map's resolution);
* ``corner_repeatability``: fraction of reference corners with a received corner within
  one patch cell (Chebyshev distance in image pixels).
"""
import threading
from dataclasses import dataclass, field
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from gplq_ros.onboard.metrics import corner_repeatability, ssim
from gplq_ros.onboard.settings import setting, validate
from gplq_ros.onboard.status import Level

METRICS = ('descriptor_cosine', 'boundary_ssim', 'corner_repeatability')


def compare(ref, boundary: Optional[np.ndarray], corners_px: Optional[np.ndarray],
            descriptor: Optional[np.ndarray]) -> Dict[str, float]:
    """``ref``: a ``onboard.pipeline.Outputs`` of the FP32 engine on the same frame;
    ``corners_px``: (N, 2+) rows starting with u, v (``messages.decode_corners`` gives
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
        out['corner_repeatability'] = corner_repeatability(ref.corners_px, np.asarray(corners_px)[:, :2], cell)
    return out


@dataclass
class DriftBounds:
    """The monitor's bounds (``onboard.settings``): a check fails when a metric is below its
    ``<metric>_min``; ERROR after ``consecutive`` failed checks in a row. The monitor's ROS
    parameters are these fields, same names, declared from them."""
    descriptor_cosine_min: float = setting(0.5, 'drift bound: VLAD descriptor cosine to FP32', range=(0.0, 1.0),
                                           read_only=False)
    boundary_ssim_min: float = setting(0.6, 'drift bound: boundary-map SSIM to FP32', range=(0.0, 1.0),
                                       read_only=False)
    corner_repeatability_min: float = setting(0.4, 'drift bound: fraction of FP32 corners repeated within one '
                                              'patch', range=(0.0, 1.0), read_only=False)
    consecutive: int = setting(3, 'checks in a row below a bound before ERROR', range=(1, 1000), read_only=False)

    def __post_init__(self):
        validate(self)

    def bound(self, metric: str) -> float:
        """The bound of a metric of ``METRICS``."""
        return getattr(self, f'{metric}_min')


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
        self.last_failed = [k for k in METRICS if k in metrics and metrics[k] < self.bounds.bound(k)]
        self.failed_in_a_row = self.failed_in_a_row + 1 if self.last_failed else 0
        return self.level

    def figures(self) -> Dict[str, Optional[float]]:
        """The last check's metrics (None: not measured), checks and failures in a row."""
        return {'checks': self.checks, **{k: self.last.get(k) for k in METRICS},
                'failed_in_a_row': self.failed_in_a_row}

    @property
    def level(self) -> Level:
        if self.failed_in_a_row >= self.bounds.consecutive:
            return Level.ERROR
        return Level.WARN if self.failed_in_a_row else Level.OK


Key = Tuple[int, int]


class CheckJoin:
    """Joins a kept camera frame with the feature outputs that carry its stamp, for one drift
    check. ``frame``/``output`` return ``(key, rgb, outputs)`` once all of ``need`` are in.
    At most ``keep`` frames wait (older ones are dropped and counted in ``skipped``);
    outputs of frames that are not waiting are ignored. Thread-safe."""

    def __init__(self, need: Sequence[str], keep: int = 4):
        self.need = tuple(need)
        self.keep = keep
        self.frames: Dict[Hashable, np.ndarray] = {}
        self.outputs: Dict[Hashable, dict] = {}
        self.skipped = 0
        self._lock = threading.Lock()

    def waiting(self, key: Hashable) -> bool:
        with self._lock:
            return key in self.frames

    def frame(self, key: Hashable, rgb: np.ndarray):
        with self._lock:
            self.frames[key] = rgb
            for k in sorted(self.frames)[:-self.keep]:
                del self.frames[k]
                self.skipped += 1
            return self._ready(key)

    def skip(self, n: int = 1) -> None:
        """Count ``n`` checks that were not made (a newer one replaced it, the node was deactivated)."""
        with self._lock:
            self.skipped += n

    def clear(self) -> int:
        """Forget every waiting frame (counted in ``skipped``), e.g. at deactivation; returns how many."""
        with self._lock:
            n = len(self.frames)
            self.skipped += n
            self.frames.clear()
            self.outputs.clear()
            return n

    def output(self, key: Hashable, kind: str, value):
        with self._lock:
            if key not in self.frames:
                return None
            self.outputs.setdefault(key, {})[kind] = value
            return self._ready(key)

    def _ready(self, key):
        got = self.outputs.get(key, {})
        item = None
        if key in self.frames and all(k in got for k in self.need):
            item = (key, self.frames.pop(key), self.outputs.pop(key))
        for k in [k for k in self.outputs if k not in self.frames]:
            del self.outputs[k]
        return item
