"""The node's worker threads: segmentation and rendering, each a job run again after a pause.

A pause after each run, not a rate: a segmentation slower than its period must not starve fusion, which
runs on the callback thread. The threads are daemons that end when :meth:`Workers.stop` is called (the
node calls it from its context's shutdown and from ``destroy_node``); a job in flight may take seconds.
"""
from __future__ import annotations

import threading
from typing import Callable, List


class Workers:
    def __init__(self, name_prefix: str):
        self.name_prefix = name_prefix
        self.stopping = threading.Event()
        self._threads: List[threading.Thread] = []

    def start(self, name: str, job: Callable[[], object], pause_s: float) -> None:
        """Run ``job`` every ``pause_s`` after its previous run ended, until :meth:`stop`."""
        thread = threading.Thread(target=self._loop, args=(job, pause_s), name=f"{self.name_prefix}_{name}",
                                  daemon=True)
        thread.start()
        self._threads.append(thread)

    def _loop(self, job: Callable[[], object], pause_s: float) -> None:
        while not self.stopping.wait(pause_s):
            job()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout_s)
