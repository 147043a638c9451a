"""The node's worker threads: segmentation and rendering, each a job run again after a pause; and fusion,
which takes the frames the camera callbacks assembled from a short queue (:class:`FrameQueue`).

A pause after each run, not a rate: a segmentation slower than its period must not take every free moment
of the process from fusion and the callbacks. A pause can be changed while the worker waits (:meth:`Workers.set_pause`,
for parameters set at run time): the wait then ends at the previous run's end plus the new pause, at
once if that is already past. The threads are daemons that end when :meth:`Workers.stop` is called (the
node calls it from its context's shutdown and from ``destroy_node``); a job in flight may take seconds.

A worker started with ``nice`` > 0 runs at that lower scheduling priority (Linux schedules threads one by
one): its compiled and torch work, which runs without the interpreter lock, then yields a contended core
to fusion and the callbacks instead of sharing it.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from typing import Callable, Dict, Generic, List, Optional, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class _Pause:
    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.changed = threading.Event()


class Workers:
    def __init__(self, name_prefix: str):
        self.name_prefix = name_prefix
        self.stopping = threading.Event()
        self._threads: List[threading.Thread] = []
        self._pauses: Dict[str, _Pause] = {}

    def start(self, name: str, job: Callable[[], object], pause_s: float, nice: int = 0) -> None:
        """Run ``job`` every ``pause_s`` after its previous run ended, until :meth:`stop`; at niceness
        ``nice`` above the process's."""
        if name in self._pauses:
            raise ValueError(f"worker {name!r} is already running")
        pause = self._pauses[name] = _Pause(pause_s)
        thread = threading.Thread(target=self._loop, args=(job, pause, nice), name=f"{self.name_prefix}_{name}",
                                  daemon=True)
        thread.start()
        self._threads.append(thread)

    def consume(self, name: str, queue: "FrameQueue[T]", job: Callable[[T], object],
                on_error: Optional[Callable[[Exception], object]] = None) -> None:
        """Run ``job(item)`` for every item put into ``queue``, in order, until :meth:`stop`; a job that
        raises is reported to ``on_error`` (or logged) and the next item is taken."""
        if name in self._pauses:
            raise ValueError(f"worker {name!r} is already running")
        self._pauses[name] = _Pause(0.0)

        def loop() -> None:
            while not self.stopping.is_set():
                item = queue.take(timeout_s=0.1)
                if item is not None:
                    try:
                        job(item)
                    except Exception as e:  # noqa: BLE001 - the consumer outlives a failing job
                        if on_error is not None:
                            on_error(e)
                        else:
                            log.exception("worker %s: a job failed", name)
                    finally:
                        queue.done()

        thread = threading.Thread(target=loop, name=f"{self.name_prefix}_{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def pause_s(self, name: str) -> float:
        return self._pauses[name].seconds

    def set_pause(self, name: str, pause_s: float) -> None:
        """Change worker ``name``'s pause; a wait under way is shortened or lengthened to match."""
        pause = self._pauses[name]
        pause.seconds = float(pause_s)
        pause.changed.set()

    def _loop(self, job: Callable[[], object], pause: _Pause, nice: int) -> None:
        if nice > 0:
            lower_thread_priority(nice)
        last_end = time.monotonic()
        while not self.stopping.is_set():
            remaining = last_end + pause.seconds - time.monotonic()
            if remaining > 0:
                if pause.changed.wait(remaining):  # a new pause: measure again from the last run's end
                    pause.changed.clear()
                    continue
                if self.stopping.is_set():
                    break
            job()
            last_end = time.monotonic()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopping.set()
        for pause in self._pauses.values():
            pause.changed.set()  # ends every wait
        for thread in self._threads:
            thread.join(timeout_s)


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (Linux: a thread id is a process id to
    setpriority); where threads cannot be told apart, nothing changes."""
    tid = threading.get_native_id()
    if not sys.platform.startswith("linux") or tid == os.getpid():  # the main thread: that would be the process
        return
    os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + int(nice)))


class FrameQueue(Generic[T]):
    """Items handed from one thread to another, at most ``size``: a put into a full queue pushes the
    oldest item out and returns it (the caller accounts for it), so the consumer always works on recent
    items and a stall never piles work up."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = int(size)
        self._items: deque = deque()
        self._unfinished = 0  # items put and neither done nor pushed out / drained
        self._ready = threading.Condition()

    def __len__(self) -> int:
        with self._ready:
            return len(self._items)

    def put(self, item: T) -> Optional[T]:
        with self._ready:
            pushed_out = self._items.popleft() if len(self._items) >= self.size else None
            self._items.append(item)
            self._unfinished += pushed_out is None
            self._ready.notify_all()
        return pushed_out

    def take(self, timeout_s: float) -> Optional[T]:
        """The oldest item, waiting up to ``timeout_s`` for one; None when none came."""
        with self._ready:
            if not self._items and not self._ready.wait_for(lambda: bool(self._items), timeout_s):
                return None
            return self._items.popleft()

    def done(self) -> None:
        """The consumer finished an item it took."""
        with self._ready:
            self._unfinished -= 1
            self._ready.notify_all()

    def drain(self) -> List[T]:
        """Every item still queued (the queue is empty after)."""
        with self._ready:
            items, self._items = list(self._items), deque()
            self._unfinished -= len(items)
            self._ready.notify_all()
            return items

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every item put was done, pushed out or drained; False on timeout."""
        with self._ready:
            return self._ready.wait_for(lambda: self._unfinished == 0, timeout_s)
