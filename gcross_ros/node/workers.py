"""The node's worker threads: segmentation and rendering, each a job run again after a pause.

A pause after each run, not a rate: a segmentation slower than its period must not starve fusion, which
runs on the callback thread. A pause can be changed while the worker waits (:meth:`Workers.set_pause`,
for parameters set at run time): the wait then ends at the previous run's end plus the new pause, at
once if that is already past. The threads are daemons that end when :meth:`Workers.stop` is called (the
node calls it from its context's shutdown and from ``destroy_node``); a job in flight may take seconds.
"""
from __future__ import annotations

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

    def start(self, name: str, job: Callable[[], object], pause_s: float) -> None:
        """Run ``job`` every ``pause_s`` after its previous run ended, until :meth:`stop`."""
        if name in self._pauses:
            raise ValueError(f"worker {name!r} is already running")
        pause = self._pauses[name] = _Pause(pause_s)
        thread = threading.Thread(target=self._loop, args=(job, pause), name=f"{self.name_prefix}_{name}",
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

    def _loop(self, job: Callable[[], object], pause: _Pause) -> None:
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
