"""Progress lines and the time budget of a calibration (no torch).

Every calibration stage reports ``progress(stage, done, total, info)``; ``ProgressLog``
turns the calls into one line per stage at its start, then at most one every ``every``
seconds and one at its end, each with the time spent and the time left at the stage's
pace so far (a call whose ``info`` has a ``note``, e.g. that the budget shortened the stage,
is always written)::

    gplq_calibrate w4a8 gplq: stage 1: 12/64 steps, 25 s, ~1 min 48 s left (total 0.0123)

``Budget`` is ``CalibConfig.budget_s`` at run time: how many steps of a measured duration
still fit, so that a stage can be shortened to its share (the caller records when it was).
"""
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

ProgressFn = Callable[[str, int, int, dict], None]


def duration(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f'{s} s'
    if s < 3600:
        return f'{s // 60} min {s % 60:02d} s'
    return f'{s // 3600} h {s % 3600 // 60:02d} min'


class ProgressLog:
    """A ``ProgressFn`` that writes lines (to stderr unless ``emit`` is given)."""

    def __init__(self, prefix: str = '', every: float = 10.0, emit: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic, units: Optional[Dict[str, str]] = None):
        self.prefix, self.every, self.clock = prefix, every, clock
        self.emit = emit or (lambda line: print(line, file=sys.stderr, flush=True))
        self.units = units or {}
        self._start: Dict[str, tuple] = {}     # stage -> (time, done) of its first call
        self._last: Dict[str, float] = {}
        self._done: Dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int, info: Optional[dict] = None) -> None:
        now = self.clock()
        again = stage in self._done and done == self._done[stage] >= total    # its end said once already
        if stage not in self._start or done < self._done[stage]:     # a new stage, or the stage again
            self._start[stage], self._last[stage] = (now, done), -float('inf')
        self._done[stage] = done
        end = done >= total
        if again and 'note' not in (info or {}):
            return
        if not end and now - self._last[stage] < self.every and 'note' not in (info or {}):
            return
        self._last[stage] = now
        t0, d0 = self._start[stage]
        spent = now - t0
        # the pace from the first call on (its own step's time is not known)
        left = spent / (done - d0) * (total - done) if done > d0 else None
        unit = self.units.get(stage, 'steps')
        text = f'{self.prefix}: ' if self.prefix else ''
        text += f'{stage}: {done}/{total} {unit}, {duration(spent)}'
        text += ', done' if end else (f', ~{duration(left)} left' if left is not None else '')
        extra = ', '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}' for k, v in (info or {}).items())
        self.emit(text + (f' ({extra})' if extra else ''))


@dataclass
class Budget:
    """``seconds`` (None: no budget) counted from construction on ``clock``."""
    seconds: Optional[float] = None
    clock: Callable[[], float] = time.monotonic
    start: float = field(default=None)

    def __post_init__(self):
        if self.start is None:
            self.start = self.clock()

    def left(self) -> float:
        return float('inf') if self.seconds is None else self.seconds - (self.clock() - self.start)

    def fit(self, planned: int, unit_s: float, share: float = 1.0, reserve_s: float = 0.0, minimum: int = 1) -> int:
        """Of ``planned`` units of ``unit_s`` seconds each, how many fit in ``share`` of the
        budget's total (``share`` < 1: this stage's part) and in what is left after keeping
        ``reserve_s`` for later stages; at least ``minimum``."""
        if self.seconds is None or unit_s <= 0:
            return planned
        room = min(self.seconds * share - (self.clock() - self.start), self.left() - reserve_s)
        return max(minimum, min(planned, int(room / unit_s)))
