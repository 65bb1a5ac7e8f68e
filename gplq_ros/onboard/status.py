"""The diagnostic levels the nodes publish, decided here without ROS.

``Level`` is diagnostic_msgs/DiagnosticStatus's level. ``feature_status``,
``monitor_status`` and ``localizer_status`` turn a node's counters into (level, message);
``worker_status`` adds the health of its worker thread: a thread that raised since the last
status, or ended while the node runs, makes the status ERROR with the exception's message.
``MonitorLimits`` are the monitor's settings (``onboard.settings``: its ROS parameters of
the same names are declared from them).
"""
import enum
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from gplq_ros.onboard.settings import setting, validate


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


Status = Tuple[Level, str]


def feature_status(processed: int, engine_errors: int, rejected: Dict[str, int], last_error: str,
                   undistortion_refused: str = '') -> Status:
    """ERROR when the engine failed and never succeeded, WARN after rejected frames or engine
    errors, or while the camera's distortion cannot be undone (``undistortion_refused``: the
    reason; the frames are processed as they are), else OK."""
    if engine_errors and not processed:
        return Level.ERROR, last_error or 'errors'
    if rejected or engine_errors:
        return Level.WARN, last_error or 'errors'
    if undistortion_refused:
        return Level.WARN, f'frames not undistorted: {undistortion_refused}'
    return Level.OK, 'running'


@dataclass(frozen=True)
class MonitorLimits:
    latency_p95_warn_ms: float = setting(250.0, 'WARN above this end-to-end p95 latency', range=(1.0, 1e6),
                                         read_only=False)
    drop_rate_warn: float = setting(0.5, 'WARN above this fraction of camera frames without output',
                                    range=(0.0, 1.0), read_only=False)
    stale_after_s: float = setting(3.0, 'STALE when no output for this long while frames arrive',
                                   range=(0.1, 3600.0), read_only=False)

    def __post_init__(self):
        validate(self)


def monitor_status(drift, snapshot: dict, limits: MonitorLimits, errors: int, last_error: str,
                   idle_s: Optional[float]) -> Status:
    """``drift``: the ``drift.DriftMonitor``; ``snapshot``: latency/rate/drop figures;
    ``idle_s``: seconds since the last feature output (None: none yet). ERROR after
    ``consecutive`` failed drift checks; WARN for fewer, a p95 latency or drop rate above
    its limit, or a failed check computation; STALE when frames arrive but no output for
    ``stale_after_s`` (unless ERROR)."""
    reasons: List[str] = []
    level = drift.level
    if level == Level.ERROR:
        reasons.append(f'drift below bound for {drift.failed_in_a_row} checks in a row '
                       f'({", ".join(drift.last_failed)})')
    elif level == Level.WARN:
        reasons.append(f'drift below bound in the last check ({", ".join(drift.last_failed)})')
    p95 = snapshot['latency_p95_ms']
    if p95 is not None and p95 > limits.latency_p95_warn_ms:
        level = max(level, Level.WARN)
        reasons.append(f'p95 latency {p95:.0f} ms > {limits.latency_p95_warn_ms:g}')
    if snapshot['drop_rate'] > limits.drop_rate_warn:
        level = max(level, Level.WARN)
        reasons.append(f'drop rate {snapshot["drop_rate"]:.2f} > {limits.drop_rate_warn:g}')
    if errors:
        level = max(level, Level.WARN)
        reasons.append(last_error)
    idle = math.inf if idle_s is None else idle_s
    if snapshot['input_rate_hz'] > 0 and idle > limits.stale_after_s and level != Level.ERROR:
        level = Level.STALE
        reasons.append(f'no feature output for {idle:.1f} s' if idle_s is not None else 'no feature output yet')
    return Level(level), '; '.join(reasons) or 'ok'


def worker_status(status: Status, new_errors: int, last_error: str, alive: bool) -> Status:
    """``status`` made ERROR when the worker raised ``new_errors`` times since the last
    status, or is no longer alive."""
    level, text = status
    if not alive:
        return Level.ERROR, f'worker thread ended: {last_error or "no exception recorded"}'
    if new_errors:
        return Level.ERROR, f'{new_errors} worker exception(s), last: {last_error}; ' + text
    return level, text


def localizer_status(last_reason: Optional[str], idle_s: Optional[float], stale_after_s: float,
                     malformed: str = '', filter_fault: str = '') -> Status:
    """The localizer's level. ``last_reason``: the last localized frame's estimate, '' for a
    fix, else why not (None: none yet); ``idle_s``: seconds since the last input (None:
    none yet); ``malformed`` / ``filter_fault``: the text of a malformed input or of a filter
    fault since the last status ('' for none). ERROR for a malformed input or a filter
    fault (the filter kept its state), WARN when no input for ``stale_after_s`` or the last
    frame gave no fix (with the reason), OK after a fix."""
    if malformed:
        return Level.ERROR, f'malformed descriptor: {malformed}'
    if filter_fault:
        return Level.ERROR, f'filter fault: {filter_fault}'
    if idle_s is None or idle_s > stale_after_s:
        return Level.WARN, 'no descriptor' + (f' for {idle_s:.1f} s' if idle_s is not None else ' yet')
    if last_reason == '':
        return Level.OK, 'fix'
    return Level.WARN, f'no fix: {last_reason if last_reason is not None else "no descriptor yet"}'
