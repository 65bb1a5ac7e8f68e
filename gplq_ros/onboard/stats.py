"""Latency and rate statistics over a sliding window (monotonic or ROS times, seconds)."""
import collections
import random
import time
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np


class LatencyWindow:
    """The last ``size`` latencies in milliseconds; p50/p95/max over them."""

    def __init__(self, size: int = 300):
        if size < 1:
            raise ValueError(f'size={size}: must be >= 1')
        self.values: Deque[float] = collections.deque(maxlen=size)

    def add(self, ms: float) -> None:
        self.values.append(float(ms))

    def summary(self) -> Dict[str, Optional[float]]:
        if not self.values:
            return {'p50_ms': None, 'p95_ms': None, 'max_ms': None, 'n': 0}
        v = np.asarray(self.values)
        return {'p50_ms': float(np.percentile(v, 50)), 'p95_ms': float(np.percentile(v, 95)),
                'max_ms': float(v.max()), 'n': len(v)}


class RateMeter:
    """Events per second over the last ``window_s`` seconds of the caller's clock.

    A rate is reported only once the events in the window span ``min_span_s``: a few
    outputs delivered together after a stall (a model warming up, a paused process) would
    otherwise read as a burst rate several times the stream's (measured: 15 Hz from a 10 Hz
    camera, from the first 0.2 s of outputs). Before that, and with fewer than two events,
    the rate is 0.0 (not known)."""

    def __init__(self, window_s: float = 5.0, min_span_s: float = 1.0):
        if not window_s > 0:
            raise ValueError(f'window_s={window_s}: must be > 0')
        if not 0 <= min_span_s <= window_s:
            raise ValueError(f'min_span_s={min_span_s}: must be in [0, window_s={window_s}]')
        self.window_s, self.min_span_s = window_s, min_span_s
        self.times: Deque[float] = collections.deque()
        self.count = 0

    def add(self, t: float) -> None:
        self.times.append(t)
        self.count += 1

    def rate(self, now: float) -> float:
        while self.times and self.times[0] < now - self.window_s:
            self.times.popleft()
        span = now - self.times[0] if self.times else 0.0
        if len(self.times) < 2 or span < self.min_span_s:
            return 0.0
        span = max(span, 1e-9)
        return (len(self.times) - 1) / span if span < self.window_s else len(self.times) / self.window_s


class StampMatcher:
    """Pairs input frames with outputs by header stamp. An input without an output after
    ``grace_s`` (caller's clock) counts as dropped; outputs whose stamp was never seen as an
    input count as ``unmatched`` (an output must carry its input's stamp)."""

    def __init__(self, grace_s: float = 2.0, capacity: int = 10000):
        self.grace_s = grace_s
        self.capacity = capacity
        self.waiting: 'collections.OrderedDict[Tuple[int, int], float]' = collections.OrderedDict()
        self.matched = 0
        self.dropped = 0
        self.unmatched = 0
        self._recent_done: Deque[Tuple[int, int]] = collections.deque(maxlen=capacity)
        self._done = set()

    def input(self, stamp: Tuple[int, int], now: float) -> None:
        if stamp in self._done or stamp in self.waiting:
            return
        self.waiting[stamp] = now
        while len(self.waiting) > self.capacity:
            self.waiting.popitem(last=False)
            self.dropped += 1

    def output(self, stamp: Tuple[int, int]) -> bool:
        if stamp in self.waiting:
            del self.waiting[stamp]
            self.matched += 1
            self._remember(stamp)
            return True
        if stamp not in self._done:
            self.unmatched += 1
        return False

    def expire(self, now: float) -> int:
        n = 0
        while self.waiting:
            stamp, t = next(iter(self.waiting.items()))
            if t > now - self.grace_s:
                break
            self.waiting.popitem(last=False)
            self._remember(stamp)
            n += 1
        self.dropped += n
        return n

    def _remember(self, stamp) -> None:
        if len(self._recent_done) == self._recent_done.maxlen:
            self._done.discard(self._recent_done[0])
        self._recent_done.append(stamp)
        self._done.add(stamp)

    @property
    def drop_rate(self) -> float:
        total = self.matched + self.dropped
        return self.dropped / total if total else 0.0


class FlowStats:
    """The monitor's view of the camera -> feature node flow, on the caller's clock (s):
    input and output rates, end-to-end latency (output receipt minus the input stamp) over
    the last ``window`` outputs, and frames without output (``StampMatcher``)."""

    def __init__(self, window: int = 300, rate_window_s: float = 5.0, grace_s: float = 2.0):
        self.latency = LatencyWindow(window)
        self.rate_in, self.rate_out = RateMeter(rate_window_s), RateMeter(rate_window_s)
        self.matcher = StampMatcher(grace_s=grace_s)

    def input(self, stamp: Tuple[int, int], now: float) -> int:
        """Count an input frame; returns how many have arrived."""
        self.rate_in.add(now)
        self.matcher.input(stamp, now)
        return self.rate_in.count

    def output(self, stamp: Tuple[int, int], now: float) -> None:
        self.latency.add(1e3 * (now - (stamp[0] + 1e-9 * stamp[1])))
        self.rate_out.add(now)
        self.matcher.output(stamp)

    def snapshot(self, now: float) -> Dict[str, Optional[float]]:
        self.matcher.expire(now)
        lat = self.latency.summary()
        return {'input_rate_hz': self.rate_in.rate(now), 'output_rate_hz': self.rate_out.rate(now),
                'latency_p50_ms': lat['p50_ms'], 'latency_p95_ms': lat['p95_ms'], 'latency_max_ms': lat['max_ms'],
                'frames_in': self.rate_in.count, 'frames_out': self.rate_out.count, 'dropped': self.matcher.dropped,
                'drop_rate': self.matcher.drop_rate}


def interleaved_ms(fns: Dict[str, Callable], inputs: Sequence, runs: int, seed: int = 0,
                   warmup: int = 1) -> Dict[str, List[float]]:
    """{name: ms of each run}: every fn is called ``warmup`` times on ``inputs[0]``, then each
    round times every fn once on ``inputs[round % len(inputs)]``, in a shuffled order, so that
    clock and load changes hit all alike (the benchmarks' way of comparing engines)."""
    rng = random.Random(seed)
    times = {n: [] for n in fns}
    names = list(fns)
    for fn in fns.values():
        for _ in range(warmup):
            fn(inputs[0])
    for r in range(runs):
        rng.shuffle(names)
        x = inputs[r % len(inputs)]
        for n in names:
            t = time.perf_counter()
            fns[n](x)
            times[n].append((time.perf_counter() - t) * 1e3)
    return times
