"""The node's worker threads: segmentation and rendering, each a job run again after a pause.

A pause after each run, not a rate: a segmentation slower than its period must not starve fusion, which
runs on the callback thread. A pause can be changed while the worker waits (:meth:`Workers.set_pause`,
for parameters set at run time): the wait then ends at the previous run's end plus the new pause, at
once if that is already past. The threads are daemons that end when :meth:`Workers.stop` is called (the
node calls it from its context's shutdown and from ``destroy_node``); a job in flight may take seconds.

A worker started with ``nice`` > 0 runs at that lower scheduling priority (Linux schedules threads one by
one): its compiled and torch work, which runs without the interpreter lock, then yields a contended core
to the callback thread instead of sharing it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, Dict, List


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
