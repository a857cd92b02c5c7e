"""A job's console: its own lines by default, Ray's too with --verbose (start_ray joining a running Ray)."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

# A job in miniature: joins Ray as jobs do, runs a task that prints a progress line (stdout) and logs
# as Ray's libraries do (stderr), and waits until the driver has printed both.
JOB = """
import logging, sys, time
from pipeline.runtime import start_ray
ray = start_ray(verbose=sys.argv[1] == "verbose")

@ray.remote(num_cpus=0.1)
def work():
    print("epoch 1/1: our own line", flush=True)
    logging.getLogger("ray.train").warning("Requesting resources: a line of Ray's own")
    return 1

assert ray.get(work.remote()) == 1
time.sleep(3)  # worker output reaches the driver asynchronously
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_worker_logs_show_only_with_verbose(ray_instance, mode):
    import os

    env = dict(os.environ, RAY_ADDRESS=ray_instance.get_runtime_context().gcs_address)
    done = subprocess.run(
        [sys.executable, "-c", JOB, mode], env=env, capture_output=True, text=True, timeout=120
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "epoch 1/1: our own line" in done.stdout
    if mode == "quiet":
        assert "Requesting resources" not in out and "pid=" not in out, out
    else:
        assert "Requesting resources" in out, out
