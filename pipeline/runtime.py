"""Connecting to Ray the same way from every job: an existing cluster if one is named, else local."""

from __future__ import annotations

import logging
import os
import sys

# Local (laptop) defaults: Ray Data's parquet footer actors and an unbounded object store are
# sized for big machines; on 2 cores they starve Train workers.
LOCAL_ENV = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}
LOCAL_OBJECT_STORE_BYTES = 2_000_000_000


def start_ray(num_cpus: int | None = None):
    """``ray.init`` once: attach to ``RAY_ADDRESS`` (``ray job submit`` sets it) or start locally.

    ``num_cpus`` applies only to a local instance: Ray refuses it when joining a cluster.
    """
    import ray

    if ray.is_initialized():
        return ray
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
    else:
        ray.init(
            address="local",  # a fresh local instance, not whatever cluster /tmp/ray last recorded
            num_cpus=num_cpus,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            include_dashboard=True,  # Train under Tune leaks placement groups without it
            logging_level=logging.WARNING,
            log_to_driver=True,
        )
    return ray


def fail(message: str, code: int = 2) -> None:
    """Exit a job with a one-line error (no traceback) for problems the user can fix."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def ensure_demo_zoo(zoo: str) -> None:
    """Build the embedded demo zoo on first use when ``zoo`` is it; make_zoo resumes a partial one and
    returns in about a second when it is complete."""
    from pipeline.config import TrainConfig

    if zoo == TrainConfig().zoo:
        from pipeline.generate import make_zoo

        print(f"demo zoo: {zoo} (built on first use: a few minutes, once)")
        make_zoo(zoo, preset="demo", seed=0)
