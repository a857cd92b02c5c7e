"""research/peak_memory.py: what the benchmarks report as memory and CPU time per kind of process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "research"))
from peak_memory import PeakMemory  # noqa: E402

BUSY = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_time_is_split_between_the_driver_and_what_it_started():
    with PeakMemory(interval=0.05) as mem:
        child = subprocess.Popen([sys.executable, "-c", BUSY.format(s=0.6) + "time.sleep(0.5)"])
        _burn(0.4)
        child.wait(timeout=60)
    cpu = mem.cpu_seconds
    # The child is not a Ray worker ("ray::..."): it counts with Ray's other processes. It exits after
    # sleeping, so its last sample holds all its busy time.
    assert cpu["ray_services"] == pytest.approx(0.6, abs=0.2)
    assert cpu["driver"] >= 0.4
    assert cpu["ray_workers"] == 0.0
    assert mem.peak >= mem.base > 0


def test_cpu_time_spent_before_the_block_is_not_counted():
    _burn(0.5)
    with PeakMemory(interval=0.05) as mem:
        time.sleep(0.2)
    assert mem.cpu_seconds["driver"] < 0.2


def test_proportional_set_size_is_summed_only_when_asked():
    with PeakMemory(interval=0.05) as plain:
        time.sleep(0.1)
    with PeakMemory(interval=0.05, pss=True) as shared:
        time.sleep(0.1)
    assert plain.peak_pss == 0
    assert 0 < shared.peak_pss <= shared.peak


@pytest.mark.parametrize("pss", [False, True])
def test_the_peak_names_the_process_that_held_the_memory(pss):
    hold = "import time\nheld = bytearray(300_000_000)\nheld[::4096] = b'x' * len(held[::4096])\ntime.sleep(1.0)\n"
    with PeakMemory(interval=0.05, pss=pss) as mem:
        child = subprocess.Popen([sys.executable, "-c", hold])
        child_name = psutil.Process(child.pid).name()
        child.wait(timeout=60)
    # Its 300 MB of private pages, touched, are at the peak under its process name, the driver's apart.
    assert mem.at_peak[child_name] >= 280 and mem.at_peak["driver"] > 0
    assert list(mem.at_peak.values()) == sorted(mem.at_peak.values(), reverse=True)  # largest first
