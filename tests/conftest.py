"""Shared test servers: one real S3 API (moto's server process on 127.0.0.1) and one Ray instance.

Both are session-scoped: starting Ray costs ~10 s, and two local Ray clusters must never run at
once on a 2-core machine. Everything started here is stopped here, by its own process id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

DUMMY_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on 127.0.0.1:{port} did not start within {timeout:.0f} s")


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server process; exports the endpoint and dummy keys so Ray workers inherit them."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*DUMMY_S3_ENV, "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"]}
    os.environ.update(DUMMY_S3_ENV)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    try:
        _wait_for_port(port)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class MlflowServer:
    """A real MLflow tracking server process (SQLite store, served artifacts in a folder) that a test can
    stop and start again on the same port and store, as an operator restarting it would."""

    def __init__(self, folder) -> None:
        self.folder, self.port, self.proc = str(folder), _free_port(), None
        os.makedirs(self.folder, exist_ok=True)
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        bin_dir = os.path.dirname(sys.executable)
        self.proc = subprocess.Popen(
            [
                os.path.join(bin_dir, "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.folder}/mlflow.db",
                "--artifacts-destination",
                os.path.join(self.folder, "artifacts"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends the server and the workers it forks
        )
        _wait_for_port(self.port, timeout=120)
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group this object started, by its leader's id
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "mlflow-server").start()
    try:
        yield server
    finally:
        server.stop()


def new_bucket(endpoint: str) -> str:
    """Create a fresh, empty bucket on the test S3 server; return it as an ``s3://`` URI."""
    import boto3
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


@pytest.fixture
def s3_bucket(s3_server) -> str:
    return new_bucket(s3_server)


@pytest.fixture(scope="session")
def tiny_zoo(ray_instance, s3_server) -> str:
    """A bucket holding, at ``zoo``, a zoo of really trained networks of four families (about a minute to
    train, once per session). Tests write their runs beside it, each under its own prefix."""
    from pipeline.generate import make_zoo

    bucket = new_bucket(s3_server)
    make_zoo(f"{bucket}/zoo", preset="tiny", seed=0)
    return bucket


@pytest.fixture(scope="session")
def ray_instance(s3_server):
    """One local Ray instance for the whole session (started after the S3 env is exported)."""
    import ray

    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    # address="local": never attach to a cluster some earlier `ray start` left registered in /tmp/ray.
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=1_000_000_000,
        include_dashboard=True,
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def _busy_cpus(ray) -> float:
    return ray.cluster_resources().get("CPU", 0.0) - ray.available_resources().get("CPU", 0.0)


def _cpus_freed_within(ray, seconds: float) -> bool:
    """Poll until no CPU of the shared Ray instance is in use, or ``seconds`` pass."""
    deadline = time.time() + seconds
    while _busy_cpus(ray) > 1e-6 and time.time() < deadline:
        time.sleep(1)
    return _busy_cpus(ray) <= 1e-6


def state_api_address(ray) -> str:
    """The shared instance's own GCS address for Ray's state API. Left to itself, the state API connects to
    whatever cluster /tmp/ray/ray_current_cluster records, which a `ray start` elsewhere on the machine (or
    one that ended without `ray stop`) leaves pointing at another, possibly dead, cluster."""
    return ray.get_runtime_context().gcs_address


def release_leftovers(ray, wait_s: float = 120.0) -> list[str]:
    """Wait for the shared Ray instance's CPUs to come free; past ``wait_s``, remove what holds them.

    Tests share one Ray instance, so a Train run or Tune trial left alive (a test that timed out in
    the middle of ``trainer.fit``, a killed driver whose actors linger) would leave the next test
    waiting for CPUs forever. Returns what had to be removed; empty when the CPUs came free.
    """
    if _cpus_freed_within(ray, wait_s):
        return []
    from ray.util import placement_group_table, remove_placement_group
    from ray.util.placement_group import PlacementGroup
    from ray.util.state import list_actors

    removed = []
    for pg_id, info in placement_group_table().items():
        if info.get("state") == "CREATED":  # removing a placement group also ends the actors in it
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))
            removed.append(f"placement group {info.get('name') or pg_id}")
    for actor in list_actors(address=state_api_address(ray), filters=[("state", "=", "ALIVE")], detail=True):
        if (actor.required_resources or {}).get("CPU", 0) > 0 and actor.pid:
            os.kill(actor.pid, signal.SIGKILL)  # a worker process of this session's own Ray instance
            removed.append(f"actor {actor.class_name} (pid {actor.pid})")
    _cpus_freed_within(ray, 30)
    return removed


@pytest.fixture(autouse=True)
def _no_ray_work_left_behind(request):
    """After every test on the shared Ray instance: its CPUs are free again, or the test errors."""
    yield
    if "ray_instance" not in request.fixturenames:
        return
    import ray

    if ray.is_initialized() and (left := release_leftovers(ray)):
        pytest.fail(f"{request.node.name} left Ray work holding CPUs; removed: {', '.join(left)}")


def make_checkpoint(
    i: int, family: str = "mlp", dataset: str = "digits", *, nan: bool = False, seed: int = 0
):
    """A small checkpoint with random weights (for format and plumbing tests, not for learning)."""
    import numpy as np

    from pipeline.zoo.checkpoint import Checkpoint, Layer

    rng = np.random.default_rng(seed * 100_003 + i)
    if family == "mlp":
        shapes = [("linear", (16, 12)), ("linear", (10, 16))]
    elif family == "cnn":
        shapes = [("conv2d", (4, 1, 3, 3)), ("conv2d", (6, 4, 5, 5)), ("linear", (10, 6))]
    else:
        raise ValueError(family)
    layers = []
    for k, (kind, shape) in enumerate(shapes):
        w = rng.normal(0, 0.3, shape).astype(np.float32)
        if nan and k == 0:
            w[0, 0] = np.nan
        layers.append(Layer(f"layers.{k}", kind, w, rng.normal(0, 0.1, shape[0]).astype(np.float32)))
    acc = float(rng.uniform(0.1, 0.9))
    return Checkpoint(
        id=f"{family}-{dataset}-{i:04d}",
        family=family,
        dataset=dataset,
        layers=layers,
        properties={"test_accuracy": acc, "train_accuracy": min(1.0, acc + 0.05), "generalization_gap": 0.05},
        hyperparameters={"seed": i},
    )


@pytest.fixture
def checkpoint_factory():
    return make_checkpoint


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_job(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # A bare name is a job (jobs/); a research script is named with its folder (research/zoo_ceiling.py).
    path = os.path.join(REPO, script if "/" in script else os.path.join("jobs", script))
    return subprocess.run(
        [sys.executable, path, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture
def run_job():
    """Runs ``python jobs/<script> *args`` (or ``python <folder>/<script>``) from the repository root, as a
    user would; output captured."""
    return _run_job


def run_then_kill(ray, fn, args: tuple, ready, what: str, timeout: float = 400.0) -> None:
    """Run ``fn(*args)`` as a Ray task (like a job's driver), wait until ``ready()``, then kill it.

    A killed driver takes its Train run / Tune trials with it, as a crashed job would.
    """
    driver = ray.remote(num_cpus=0.25, max_retries=0)(fn).remote(*args)
    deadline = time.time() + timeout
    while not ready():
        if time.time() > deadline:
            pytest.fail(f"{what} not reached within {timeout:.0f} s")
        time.sleep(1)
    ray.cancel(driver, force=True)
    with pytest.raises(Exception):  # noqa: B017 - cancelled: TaskCancelledError or WorkerCrashedError
        ray.get(driver, timeout=60)
    # Like a crashed job's, the killed driver's actors end with it; wait until their CPUs are free
    # so that the resumed run does not queue behind them (removing them if Ray has not).
    release_leftovers(ray)


@pytest.fixture
def one_thread():
    """Torch on one thread for the test, restored afterwards. Tiny tensors: thread hand-offs cost more
    than the maths, badly so on a busy 2-core machine. Opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
