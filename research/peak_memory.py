"""Peak resident memory of a process and everything it started, for the research benchmarks."""

from __future__ import annotations

import contextlib
import threading
import time

import psutil


class PeakMemory:
    """Peak of the summed RSS of this process and its descendants (Ray's raylet, workers, ...)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for p in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
                total += p.memory_info().rss
        return total

    def __enter__(self):
        self.base = self._sample()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
