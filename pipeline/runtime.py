"""Connecting to Ray the same way from every job: an existing cluster if one is named, else local."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

# Local (laptop) defaults: Ray Data's parquet footer actors and an unbounded object store are
# sized for big machines; on 2 cores they starve Train workers.
LOCAL_ENV = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}
LOCAL_OBJECT_STORE_BYTES = 2_000_000_000


JOBS_API_SCHEMES = ("http://", "https://")


def ray_address() -> str | None:
    """``RAY_ADDRESS`` as ``ray.init`` takes it (a cluster's GCS address, ``auto`` or ``ray://``), or None.

    An ``http://`` address is Ray's jobs API, which ``ray job submit`` talks to but a driver cannot join:
    refused here, before a job writes anything, with the ways out.
    """
    address = os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(JOBS_API_SCHEMES):
        raise ValueError(
            f"RAY_ADDRESS={address} is the address of Ray's jobs API, which a job cannot attach to. "
            "Submit the job to it (ray job submit --working-dir . -- python jobs/...), or set RAY_ADDRESS to "
            "the cluster's GCS address (host:6379; RAY_API_SERVER_ADDRESS then keeps `ray job submit` "
            "pointed at the jobs API), or unset RAY_ADDRESS to run on a local Ray"
        )
    return address


def add_ray_arguments(parser) -> None:
    """The options every job that runs on Ray takes."""
    parser.add_argument("--num-cpus", type=int, help="local Ray only: CPUs to use")
    parser.add_argument(
        "--verbose", action="store_true", help="show Ray's and MLflow's own logs (hidden by default)"
    )


def start_ray(num_cpus: int | None = None, verbose: bool = True):
    """``ray.init`` once: attach to ``RAY_ADDRESS`` (``ray job submit`` sets it) or start locally.

    ``num_cpus`` applies only to a local instance: Ray refuses it when joining a cluster. Unless
    ``verbose``, the job's output is its own: see ``quiet_logs``. Raises ValueError for an address
    a driver cannot join (``ray_address``).
    """
    import ray

    if ray.is_initialized():
        return ray
    address = ray_address()
    for k, v in LOCAL_ENV.items():
        os.environ.setdefault(k, v)
    if not verbose:
        quiet_logs()
        _quiet_ray_data()
    # Ray Train sends print() in its controller and workers through its logger (stderr); plain prints
    # stay on stdout, where the quiet driver below keeps them.
    runtime_env = None if verbose else {"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
    else:
        ray.init(
            address="local",  # a fresh local instance, not whatever cluster /tmp/ray last recorded
            num_cpus=num_cpus,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            include_dashboard=True,  # Train under Tune leaks placement groups without it
            logging_level=logging.WARNING,
            log_to_driver=True,
            runtime_env=runtime_env,
        )
    if not verbose:
        _print_worker_stdout_only()
    return ray


# Loggers whose routine messages a job's user does not need; every one still reaches Ray's log files
# under /tmp/ray/session_latest/logs, and --verbose shows them.
_NOISY_LOGGERS = {
    "ray._private.authentication.authentication_token_setup": logging.ERROR,  # "token auth is enabled"
    "ray.data._internal.progress": logging.ERROR,  # "progress bars disabled" where a job disables them
    "alembic": logging.WARNING,  # the MLflow store's schema migrations
}
# MLflow reads these when it is imported (in this process and in the workers it starts): its INFO lines,
# the run URL it prints when a run ends (a job prints its own summary with it) and its download bars.
_QUIET_MLFLOW_ENV = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def quiet_logs() -> None:
    """Keep this process's console to the job's own lines: its stages, bars, epochs and results."""
    import warnings

    for k, v in _QUIET_MLFLOW_ENV.items():
        os.environ.setdefault(k, v)
    for name, level in _NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.")


def _quiet_ray_data() -> None:
    """Ray Data logs every execution's plan and progress at INFO to the console and to its log file: keep
    the file. Its errors leave the console too: each is a failed task whose exception reaches the job,
    which ends with one line for what a user can fix and the full traceback for anything else."""
    import ray.data  # noqa: F401 - configures the "ray.data" logger and its handlers

    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":
            handler.setLevel(logging.WARNING)
            handler.addFilter(lambda record: record.levelno < logging.ERROR)


def _print_worker_stdout_only() -> None:
    """Show what Ray's workers print to stdout (this project's progress lines), not what they log to stderr
    (Ray's INFO messages, its C++ core's notices, deprecation warnings). A failing task still fails the job
    with its traceback; the workers' full output stays in Ray's log files."""
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray release: keep Ray's own printing
        return

    def stdout_only(batch: dict) -> None:
        if not batch.get("is_err"):
            ray_worker.print_to_stdstream(batch, ignore_prefix=True)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("sne_print_stdout")
    dispatcher.add_handler("sne_print_stdout", stdout_only)


def fail(message: str, code: int = 2) -> None:
    """Exit a job with a one-line error (no traceback) for problems the user can fix."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


@contextlib.contextmanager
def user_errors(*more: type[BaseException]):
    """Inside, the errors a user can act on end the job with one line (``fail``), not a traceback: bad
    input (a zoo, a value, a missing file, and ``more``) and storage that stopped answering after its
    retries (``storage.unreachable``). Anything else is a bug and keeps its traceback."""
    from pipeline import storage
    from pipeline.zoo import ZooError

    try:
        yield
    except Exception as e:
        message = storage.unreachable(e)
        if message is None and isinstance(e, (ZooError, ValueError, FileNotFoundError, *more)):
            message = str(e)
        if message is None:
            raise
        fail(message)


def ensure_demo_zoo(zoo: str) -> None:
    """Build the embedded demo zoo on first use when ``zoo`` is it; make_zoo resumes a partial one and
    returns in about a second when it is complete."""
    from pipeline.config import TrainConfig

    if zoo == TrainConfig().zoo:
        from pipeline.generate import make_zoo

        print(f"demo zoo: {zoo} (built on first use: a few minutes, once)")
        make_zoo(zoo, preset="demo", seed=0)


# Allocations of at least this many bytes get pages of their own, returned to the system when freed.
MMAP_THRESHOLD = 4 * 2**20


def bound_allocator_memory(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold so that large tensors freed during a training step go back to the system.

    glibc raises the threshold each time a large mmapped block is freed, so after the first micro-batches
    every later block of the chunk encoder comes from the heap, which keeps what it once held: a training
    step's resident memory then grew with the network's chunk count (2.6 GB for a 1 M-parameter MLP,
    over 24 GB at 10 M) though the micro-batches are checkpointed. A fixed threshold keeps it near the
    micro-batch's own (1.1 GB at 1 M, 1.05 GB for a 10 M-parameter CNN), at 1.5-2x the step's time, as
    every large tensor then costs fresh pages (BENCHMARKS.md); Ray Train workers set it when training
    with a chunk budget. Returns False where the C library is not glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if sys.platform != "linux" or not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # glibc's M_MMAP_THRESHOLD
    return bool(mallopt(m_mmap_threshold, int(threshold)))
