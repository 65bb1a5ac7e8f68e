"""The localizer's optional aiding inputs (no ROS, no numpy): odometry for the filter's
prediction and height above ground for the refinement's scale, each kept in a stamped buffer
and looked up at a camera frame's stamp.

The node's callbacks only turn a message into numbers (``odometry_pose``, ``range_height``,
``altitude_height``: a bad value raises ValueError naming the field and the value) and add
them to a buffer; the localizer thread asks the buffer for the value at the frame's stamp:

* ``PoseBuffer.at(t)``: the odometry pose (x, y, yaw) at ``t``, interpolated between the two
  samples around ``t`` (yaw the short way round), or the newest sample held when ``t`` is at
  most ``input_max_age_s`` after it. Refused (None) when the buffer is empty, ``t`` is older
  than the oldest sample kept, the two samples around ``t`` are more than ``odom_max_gap_s``
  apart, or the newest sample is more than ``input_max_age_s`` older than ``t``.
* ``HeightBuffer.at(t)``: the height at ``t`` from the samples within ``input_max_age_s`` of
  ``t``: interpolated between the two around it, else the one there is; refused (None) when
  none is that close.

Every refusal is counted by reason (``missing``) and described (``last_missing``); a lookup
never waits. A sample older than the oldest kept (the clock jumped back: a bag replayed)
empties the buffer first (``resets``). Thread-safe: one thread adds, another looks up.
"""
import bisect
import math
import threading
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Tuple

from gplq_ros.onboard.settings import setting, validate
from gplq_ros.onboard.status import Level, Status


@dataclass(frozen=True)
class OdomPose:
    """The vehicle's pose in an odometry frame (VIO, the autopilot) at a frame's stamp: x, y in
    metres, yaw in radians; any odometry frame (its rotation against ``map`` is estimated)."""
    x: float
    y: float
    yaw: float

    def __post_init__(self):
        for k in ('x', 'y', 'yaw'):
            if not math.isfinite(getattr(self, k)):
                raise ValueError(f'OdomPose.{k}={getattr(self, k)!r}: not finite')


__all__ = ['OdomPose', 'AidingConfig', 'HEIGHT_TYPES', 'Pose2D', 'PoseBuffer', 'HeightBuffer', 'yaw_of_quaternion',
           'stamp_seconds', 'odometry_pose', 'range_height', 'altitude_height', 'aiding_status', 'wrap_angle']

HEIGHT_TYPES = ('range', 'altitude')


@dataclass(frozen=True)
class AidingConfig:
    """The localizer node's optional inputs (``onboard.settings``: the node declares one ROS
    parameter per field). Both off by default: the node then subscribes to neither."""
    use_odometry: bool = setting(False, 'subscribe odom (nav_msgs/Odometry: pose of the vehicle in its odometry '
                                 'frame, z up) and give the localizer the odometry pose at each frame\'s stamp '
                                 'for its prediction')
    use_height: bool = setting(False, 'subscribe height (height above ground, m; type height_type) and give the '
                               'localizer the height at each frame\'s stamp for its refinement')
    height_type: str = setting('range', 'message on height: range = sensor_msgs/Range of a downward rangefinder '
                               '(readings outside [min_range, max_range] refused); altitude = std_msgs/Float64 '
                               'height above ground in m, e.g. MAVROS global_position/rel_alt (no stamp: the '
                               'receipt time is used)', choices=HEIGHT_TYPES)
    odom_max_gap_s: float = setting(0.25, 'odometry: the two samples around a frame\'s stamp may be at most this '
                                    'far apart (s), else the frame gets no odometry', range=(0.001, 10.0))
    input_max_age_s: float = setting(0.25, 'odometry and height: a frame more than this (s) after the newest '
                                     'sample gets none; height: samples within this of the stamp are used',
                                     range=(0.0, 10.0))
    input_buffer: int = setting(500, 'samples kept per input (cover the frames\' delay: 500 = 2.5 s of '
                                '200 Hz odometry)', range=(2, 100000))

    def __post_init__(self):
        validate(self)


class Pose2D(NamedTuple):
    """A planar pose in the odometry frame: metres, radians (yaw from x, counter-clockwise)."""
    x: float
    y: float
    yaw: float


def wrap_angle(a: float) -> float:
    """``a`` in [-pi, pi)."""
    return (a + math.pi) % (2 * math.pi) - math.pi


class _Buffer:
    REASONS = ('empty', 'before', 'gap', 'stale')

    def __init__(self, size: int, max_age_s: float, what: str):
        if size < 2:
            raise ValueError(f'{what} buffer: size={size}: must be at least 2')
        if not max_age_s >= 0:
            raise ValueError(f'{what} buffer: max_age_s={max_age_s!r}: must be >= 0')
        self.size, self.max_age_s, self.what = size, max_age_s, what
        self._t: List[float] = []
        self._v: List[tuple] = []
        self._lock = threading.Lock()
        self.missing: Dict[str, int] = {r: 0 for r in self.REASONS}
        self.last_missing = ''     # why the last refused lookup got nothing
        self.used = 0              # lookups that gave a value
        self.held = 0              # of them: the newest sample held (the stamp after it)
        self.resets = 0            # the buffer emptied because the clock jumped back

    def __len__(self) -> int:
        with self._lock:
            return len(self._t)

    @property
    def missing_total(self) -> int:
        with self._lock:
            return sum(self.missing.values())

    def _add(self, t: float, v: tuple) -> None:
        if not math.isfinite(t):
            raise ValueError(f'{self.what} stamp {t!r}: not finite')
        with self._lock:
            if self._t and t < self._t[0]:          # the clock jumped back: forget the old timeline
                self._t.clear()
                self._v.clear()
                self.resets += 1
            i = bisect.bisect_left(self._t, t)
            if i < len(self._t) and self._t[i] == t:
                self._v[i] = v                       # the same stamp again: the newer message wins
                return
            self._t.insert(i, t)
            self._v.insert(i, v)
            if len(self._t) > self.size:
                del self._t[0], self._v[0]

    def _refuse(self, reason: str, text: str) -> None:
        self.missing[reason] += 1
        self.last_missing = f'{reason}: {text}'
        return None

    def newest(self) -> Optional[Tuple[float, tuple]]:
        with self._lock:
            return (self._t[-1], self._v[-1]) if self._t else None


class PoseBuffer(_Buffer):
    """Odometry poses by stamp; ``at(t)`` interpolates (see the module docstring)."""

    def __init__(self, size: int = 500, max_gap_s: float = 0.25, max_age_s: float = 0.25):
        super().__init__(size, max_age_s, 'odometry')
        if not max_gap_s > 0:
            raise ValueError(f'odometry buffer: max_gap_s={max_gap_s!r}: must be > 0')
        self.max_gap_s = max_gap_s

    def add(self, t: float, pose: Pose2D) -> None:
        x, y, yaw = (float(v) for v in pose)
        for name, v in (('x', x), ('y', y), ('yaw', yaw)):
            if not math.isfinite(v):
                raise ValueError(f'odometry {name}={v!r}: not finite')
        self._add(float(t), (x, y, wrap_angle(yaw)))

    def at(self, t: float) -> Optional[Pose2D]:
        with self._lock:
            ts = self._t
            if not ts:
                return self._refuse('empty', 'no odometry received')
            i = bisect.bisect_right(ts, t)
            if i == 0:
                return self._refuse('before', f'frame {t:.3f} before the oldest sample kept ({ts[0]:.3f}; '
                                    f'{len(ts)} kept)')
            if i == len(ts):
                age = t - ts[-1]
                if age > self.max_age_s:
                    return self._refuse('stale', f'newest sample {age:.3f} s before the frame (max '
                                        f'{self.max_age_s:g} s)')
                self.used += 1
                self.held += age > 0
                return Pose2D(*self._v[-1])
            t0, t1 = ts[i - 1], ts[i]
            if t1 - t0 > self.max_gap_s:
                return self._refuse('gap', f'samples around the frame {t1 - t0:.3f} s apart (max '
                                    f'{self.max_gap_s:g} s)')
            (x0, y0, a0), (x1, y1, a1) = self._v[i - 1], self._v[i]
            w = (t - t0) / (t1 - t0)
            self.used += 1
            return Pose2D(x0 + w * (x1 - x0), y0 + w * (y1 - y0), wrap_angle(a0 + w * wrap_angle(a1 - a0)))


class HeightBuffer(_Buffer):
    """Heights above ground by stamp; ``at(t)`` uses the samples within ``max_age_s`` of ``t``."""

    def __init__(self, size: int = 500, max_age_s: float = 0.25):
        super().__init__(size, max_age_s, 'height')

    def add(self, t: float, height_m: float) -> None:
        h = float(height_m)
        if not (math.isfinite(h) and h > 0):
            raise ValueError(f'height {h!r} m: must be a finite height above ground > 0')
        self._add(float(t), (h,))

    def at(self, t: float) -> Optional[float]:
        with self._lock:
            ts = self._t
            if not ts:
                return self._refuse('empty', 'no height received')
            i = bisect.bisect_right(ts, t)
            lo = i - 1 if i > 0 and t - ts[i - 1] <= self.max_age_s else None
            hi = i if i < len(ts) and ts[i] - t <= self.max_age_s else None
            if lo is None and hi is None:
                if i == len(ts):
                    return self._refuse('stale', f'newest sample {t - ts[-1]:.3f} s before the frame (max '
                                        f'{self.max_age_s:g} s)')
                if i == 0:
                    return self._refuse('before', f'frame {t:.3f} before the oldest sample kept ({ts[0]:.3f})')
                return self._refuse('gap', f'no sample within {self.max_age_s:g} s of the frame')
            self.used += 1
            if lo is not None and hi is not None and ts[hi] > ts[lo]:
                w = (t - ts[lo]) / (ts[hi] - ts[lo])
                return self._v[lo][0] + w * (self._v[hi][0] - self._v[lo][0])
            if hi is None:
                self.held += t > ts[lo]
            return self._v[lo if lo is not None else hi][0]


# -- messages -> numbers (duck-typed: any object with the ROS message's fields) ----------------------------------
def stamp_seconds(stamp, what: str) -> float:
    """A builtin_interfaces/Time in seconds; a zero stamp (an unstamped message) is refused."""
    if stamp.sec == 0 and stamp.nanosec == 0:
        raise ValueError(f'{what}.header.stamp is zero (unstamped message): the value cannot be placed in time')
    return stamp.sec + stamp.nanosec * 1e-9


def yaw_of_quaternion(x: float, y: float, z: float, w: float, what: str = 'orientation') -> float:
    """Yaw (rotation about z, radians) of a quaternion (normalised here); a zero or non-finite
    quaternion is refused naming ``what``."""
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if not (math.isfinite(n) and n > 1e-6):
        raise ValueError(f'{what}=({x!r}, {y!r}, {z!r}, {w!r}): not a rotation (norm {n!r})')
    x, y, z, w = x / n, y / n, z / n, w / n
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def odometry_pose(msg) -> Tuple[float, Pose2D]:
    """(stamp s, Pose2D) of a nav_msgs/Odometry: ``pose.pose.position`` x, y and the yaw of
    ``pose.pose.orientation`` (the child frame's pose in ``header.frame_id``)."""
    t = stamp_seconds(msg.header.stamp, 'Odometry')
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    for name, v in (('x', p.x), ('y', p.y)):
        if not math.isfinite(v):
            raise ValueError(f'Odometry.pose.pose.position.{name}={v!r}: not finite')
    return t, Pose2D(float(p.x), float(p.y), yaw_of_quaternion(q.x, q.y, q.z, q.w, 'Odometry.pose.pose.orientation'))


def range_height(msg) -> Tuple[float, float]:
    """(stamp s, height m) of a sensor_msgs/Range of a downward rangefinder. A reading outside
    [min_range, max_range] (REP 117: -inf too close, +inf nothing detected), NaN or <= 0 is
    refused."""
    t = stamp_seconds(msg.header.stamp, 'Range')
    r, lo, hi = float(msg.range), float(msg.min_range), float(msg.max_range)
    if not math.isfinite(r):
        raise ValueError(f'Range.range={r!r}: not finite (REP 117: -inf too close, +inf nothing in range)')
    if not lo <= r <= hi:
        raise ValueError(f'Range.range={r!r}: outside [min_range={lo:g}, max_range={hi:g}]')
    if r <= 0:
        raise ValueError(f'Range.range={r!r}: must be > 0')
    return t, r


def altitude_height(value: float) -> float:
    """The height above ground (m) of a std_msgs/Float64 (e.g. MAVROS global_position/rel_alt);
    NaN, inf and values <= 0 are refused."""
    h = float(value)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f'Float64.data={h!r}: must be a finite height above ground > 0 m')
    return h


def aiding_status(status: Status, missing: Dict[str, int], last: Dict[str, str]) -> Status:
    """The localizer's status with the aiding inputs: when an enabled input was missing for
    frames since the last status (``missing``: {input: frames}, ``last``: {input: why}) the
    message says so and an OK status becomes WARN (a higher level stays)."""
    level, text = status
    gone = [f'{name} missing for {n} frame(s) ({last.get(name, "")})' for name, n in missing.items() if n]
    if not gone:
        return status
    return max(level, Level.WARN), f'{text}; ' + '; '.join(gone)
