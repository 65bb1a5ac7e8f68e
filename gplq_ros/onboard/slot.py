"""Newest-frame hand-over between a subscription callback and an inference thread.

The callback ``put``s every decoded frame; the worker ``take``s the newest one. A frame
that is replaced before the worker takes it is counted in ``dropped`` (never queued), so
the worker always runs on the most recent image and no backlog can grow.
"""
import threading
from typing import Any, Callable, Optional, Tuple


class LatestSlot:
    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Store ``item``; returns True when it replaced a frame nobody had taken (a drop)."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: Optional[float] = None) -> Any:
        """The newest item, or None after ``timeout`` seconds or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def discard(self) -> bool:
        """Drop the waiting item, if any (counted in ``dropped``); True when there was one."""
        with self._cond:
            had = self._item is not None
            if had:
                self.dropped += 1
            self._item = None
            return had

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        return int(self._item is not None)


class SlotWorker:
    """A daemon thread that calls ``handle(item)`` for the newest item of a ``LatestSlot``
    until ``stop()``. Only ``stop()`` ends it: what ``handle`` returns is ignored (a frame it
    skips, e.g. because the node was deactivated meanwhile, is just a frame), so the worker
    lives as long as its node is configured.

    An exception from ``handle`` does not end the thread: it is counted, kept as
    ``last_error`` (type and message) and passed to ``on_error`` (the node logs it), and
    the thread takes the next item. ``health()`` tells the node's status what happened
    since it last asked and whether the thread still runs (``thread.is_alive()``, nothing
    else): a thread that ended without ``stop()`` (a BaseException such as SystemExit out of
    ``handle``) reads as not alive, with the cause in ``last_error``."""

    def __init__(self, handle: Callable[[Any], Any], name: str,
                 on_error: Optional[Callable[[str], None]] = None):
        self.slot = LatestSlot()
        self._handle = handle
        self._on_error = on_error
        self._lock = threading.Lock()
        self.errors = 0
        self._reported = 0
        self.last_error = ''
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.slot.closed:
                item = self.slot.take(timeout=0.2)
                if item is None:
                    continue
                try:
                    self._handle(item)
                except Exception as e:  # noqa: BLE001 -- any failure of one item: report it, serve the next
                    self._report(e)
        except BaseException as e:  # noqa: BLE001 -- SystemExit and the like end the thread: say so, end
            text = f'{self.thread.name} ended by {type(e).__name__}: {str(e)[:300]}'
            with self._lock:
                self.last_error = text
            self._tell(text)

    def _report(self, e: Exception) -> None:
        text = f'{self.thread.name}: {type(e).__name__}: {str(e)[:300]}'
        with self._lock:
            self.errors += 1
            self.last_error = text
        self._tell(text)

    def _tell(self, text: str) -> None:
        if self._on_error is not None:
            try:
                self._on_error(text)
            except Exception:  # noqa: BLE001 -- a failing logger must not end the thread either
                pass

    def health(self) -> Tuple[int, str, bool]:
        """(exceptions since the last call, the last exception's text, ``thread.is_alive()``)."""
        with self._lock:
            new, self._reported = self.errors - self._reported, self.errors
            return new, self.last_error, self.thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self.slot.close()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
