"""Peak resident memory of a process and everything it started, and the CPU time each kind of process
spent meanwhile, for the research benchmarks."""

from __future__ import annotations

import contextlib
import threading
import time

import psutil

# Ray titles its worker processes "ray::<task or actor>"; everything else it starts (raylet, GCS,
# dashboard, log monitor, ...) is its own machinery.
ROLES = ("driver", "ray_workers", "ray_services")


def _role(process: psutil.Process, me: psutil.Process) -> str:
    if process.pid == me.pid:
        return "driver"
    with contextlib.suppress(psutil.Error):
        if process.name().startswith("ray::") or "default_worker.py" in " ".join(process.cmdline()):
            return "ray_workers"
    return "ray_services"


class PeakMemory:
    """Peak of the summed RSS of this process and its descendants (Ray's raylet, workers, ...), and
    ``cpu_seconds``: the CPU time (user + system) each role in ROLES used while the block ran.

    RSS counts a page shared by several processes (Ray's object store, mapped by every worker that
    reads an object) once per process. With ``pss`` the proportional set size is summed too
    (``peak_pss``: each shared page split among the processes that map it, so the sum is the real
    footprint); reading it parses every process's memory map, so it slows the sampling and costs CPU.

    CPU time is read at every sample, so a process that exits between samples loses at most one
    interval of it."""

    def __init__(self, interval: float = 0.2, pss: bool = False):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.pss, self.peak_pss, self._pss_now = pss, 0, 0
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, tuple[str, float]] = {}

    def _sample(self) -> int:
        me = psutil.Process()
        total = pss = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
                total += p.memory_info().rss
                if self.pss:
                    pss += p.memory_full_info().pss
                times = p.cpu_times()
                cpu = times.user + times.system
                if p.pid not in self._cpu_last:
                    # Seen first now: a process alive at the start counts from there, a new one from 0.
                    self._cpu_start[p.pid] = cpu if not self._started else 0.0
                self._cpu_last[p.pid] = (_role(p, me), cpu)
        self._pss_now = pss
        return total

    def __enter__(self):
        self._started = False
        self.base = self._sample()
        self._started = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self._record()
            time.sleep(self.interval)

    def _record(self):
        self.peak = max(self.peak, self._sample())
        self.peak_pss = max(self.peak_pss, self._pss_now)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self._record()

    @property
    def cpu_seconds(self) -> dict[str, float]:
        used = dict.fromkeys(ROLES, 0.0)
        for pid, (role, cpu) in self._cpu_last.items():
            used[role] += cpu - self._cpu_start[pid]
        return {role: round(seconds, 2) for role, seconds in used.items()}
