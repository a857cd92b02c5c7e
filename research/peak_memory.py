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


def _label(process: psutil.Process) -> str:
    """A Ray worker by its title (``ray::<task or actor>``, idle ones ``ray::IDLE``), anything else by name."""
    title = (process.cmdline() or [""])[0]
    return title.split(" ")[0][:48] if title.startswith("ray::") else process.name()


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
        self.at_peak: dict[str, int] = {}
        self.pss, self.peak_pss = pss, 0
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds at the last sample)

    def _sample(self, first: bool = False) -> tuple[int, int]:
        """(summed RSS, summed PSS or 0) now; records each process's CPU time on the way, and what each
        kind of process held (kept for ``at_peak``)."""
        me = psutil.Process()
        rss = pss = 0
        self._by_process: dict[str, int] = {}
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
                held = p.memory_info().rss
                rss += held
                if self.pss:
                    full = p.memory_full_info()
                    pss += full.pss
                    held = full.uss
                label = "driver" if p.pid == me.pid else _label(p)
                self._by_process[label] = self._by_process.get(label, 0) + held
                times = p.cpu_times()
                cpu = times.user + times.system
                if p.pid not in self._cpu_last:
                    # Seen first now: a process alive at the start counts from there, a new one from 0.
                    self._cpu_start[p.pid] = cpu if first else 0.0
                    self._cpu_last[p.pid] = (_role(p, me), cpu)
                self._cpu_last[p.pid] = (self._cpu_last[p.pid][0], cpu)
        return rss, pss

    def __enter__(self):
        self.base, _ = self._sample(first=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self._record()
            time.sleep(self.interval)

    def _record(self):
        rss, pss = self._sample()
        if (pss if self.pss else rss) >= (self.peak_pss if self.pss else self.peak):
            # Each kind of process (the driver, Ray's workers by their titles, raylet, ...) at the peak, in
            # MB: its private memory (USS) where PSS is sampled, else its RSS, which also counts the pages of
            # Ray's object store it has mapped. What grows with the zoo, and where.
            self.at_peak = {
                k: round(v / 1e6) for k, v in sorted(self._by_process.items(), key=lambda kv: -kv[1])
            }
        self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)

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
