"""Messages of one camera frame joined by header stamp (no ROS): the localizer's descriptor
and boundary map come on two topics, in either order, with the stamp of the frame.

``StampJoin.add(key, kind, value)`` returns ``{kind: value}`` for the key once every kind
of ``need`` is in, else None. At most ``JoinConfig.pending_stamps`` stamps wait for their
partners: beyond that the oldest (first seen) is dropped and counted in ``unpaired``, so a
partner that never comes costs one count, never memory. Thread-safe.
"""
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Hashable, Optional, Sequence

from gplq_ros.onboard.settings import setting, validate


@dataclass(frozen=True)
class JoinConfig:
    pending_stamps: int = setting(10, 'stamps waiting for their other input (descriptor or boundary map); '
                                  'beyond this the oldest is dropped and counted as unpaired', range=(1, 1000))

    def __post_init__(self):
        validate(self)


class StampJoin:
    def __init__(self, need: Sequence[str], cfg: JoinConfig = JoinConfig()):
        self.need = tuple(need)
        if not self.need:
            raise ValueError('StampJoin needs at least one kind of input')
        self.cfg = cfg
        self._pending: 'OrderedDict[Hashable, Dict[str, Any]]' = OrderedDict()
        self._lock = threading.Lock()
        self.unpaired = 0          # stamps dropped without their partner
        self.joined = 0

    def add(self, key: Hashable, kind: str, value: Any) -> Optional[Dict[str, Any]]:
        if kind not in self.need:
            raise ValueError(f'StampJoin: kind {kind!r} is not one of {list(self.need)}')
        with self._lock:
            got = self._pending.setdefault(key, {})
            got[kind] = value
            if all(k in got for k in self.need):
                del self._pending[key]
                self.joined += 1
                return got
            while len(self._pending) > self.cfg.pending_stamps:
                self._pending.popitem(last=False)
                self.unpaired += 1
            return None

    def clear(self) -> int:
        """Forget every waiting stamp (counted in ``unpaired``); returns how many."""
        with self._lock:
            n = len(self._pending)
            self.unpaired += n
            self._pending.clear()
            return n

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)
