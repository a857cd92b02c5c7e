"""Storage that goes away, and workers that die, in the middle of a job: every checkpoint ends up exactly once.

The jobs reach the test S3 server through ``OutageProxy`` (tests/faults.py), which the tests cut and
restore while the job runs. Jobs run as a user's would on a cluster: as Ray tasks or submitted jobs whose
runtime environment names the proxy as the S3 endpoint.
"""

import json
import os
import signal
import sys
import time

import pytest
from conftest import state_api_address
from faults import OutageProxy

from pipeline import storage
from pipeline.data import (
    COMPLETE_MARKER,
    WRITING_MARKER,
    prepare_chunk_records,
    read_completion,
    read_record_index,
)
from pipeline.generate import make_zoo
from pipeline.zoo import Checkpoint, native, read_zoo

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PARTS = 30  # native shards of 10: prepare reads them one part at a time, so the outage falls mid-way
OUTAGE_S = 20


@pytest.fixture
def proxy(s3_server):
    p = OutageProxy(int(s3_server.rsplit(":", 1)[1]))
    yield p
    p.close()


@pytest.fixture
def zoo(s3_bucket, checkpoint_factory):
    uri = f"{s3_bucket}/zoo"
    ids = [f"cnn-digits-{i:04d}" for i in range(PARTS * 10)]
    native.write_zoo(uri, (checkpoint_factory(i, "cnn") for i in range(PARTS * 10)), shard_size=10)
    return uri, ids


def _start(ray, fn, *args, env: dict | None = None, **kwargs):
    """``fn`` of the library as a Ray task, as a job's driver runs it; ``env``: its environment variables."""
    runtime_env = {"env_vars": env} if env else None
    return ray.remote(num_cpus=0.25, max_retries=0, runtime_env=runtime_env)(fn).remote(*args, **kwargs)


def _start_prepare(ray, zoo_uri: str, out: str, env: dict | None = None):
    return _start(ray, prepare_chunk_records, zoo_uri, 8, out=out, parts_in_flight=1, env=env)


def _files(uri: str) -> int:
    fs, path = storage.filesystem(uri)
    fs.invalidate_cache()
    return len(fs.ls(path, detail=False)) if fs.exists(path) else 0


def _wait_for(condition, what: str, job=None, timeout: float = 300) -> None:
    """Poll ``condition`` until it holds; a job that ends first shows its error (or fails the test)."""
    import ray

    deadline = time.time() + timeout
    while not condition():
        if job is not None and ray.wait([job], timeout=0)[0]:
            ray.get(job)
            pytest.fail(f"the job ended before {what}")
        if time.time() > deadline:
            pytest.fail(f"{what} not reached within {timeout:.0f} s")
        time.sleep(0.5)


def _assert_exactly_once(out: str, ids: list[str]) -> None:
    found = read_record_index(out, ("id",)).column("id").to_pylist()
    assert sorted(found) == sorted(ids), (
        f"{len(found)} records, {len(set(found))} distinct, {len(ids)} listed"
    )


def test_prepare_rides_out_a_storage_outage(ray_instance, s3_bucket, zoo, proxy):
    zoo_uri, ids = zoo
    out = f"{s3_bucket}/records"
    job = _start_prepare(ray_instance, zoo_uri, out, env={"AWS_ENDPOINT_URL": proxy.endpoint})
    _wait_for(lambda: _files(f"{out}/rejected") >= 3, "three parts prepared", job)
    proxy.cut()
    parts_at_cut = _files(f"{out}/rejected")
    time.sleep(OUTAGE_S)
    proxy.restore()
    summary = ray_instance.get(job, timeout=600)

    assert parts_at_cut < PARTS  # the outage fell in the middle of the job ...
    assert proxy.turned_away > 0  # ... which met it, retried through it ...
    assert not summary.reused and summary.records == len(ids)  # ... and finished
    _assert_exactly_once(out, ids)


def _submit(client, zoo_uri: str, out: str, env_vars: dict) -> str:
    entrypoint = f"{sys.executable} {REPO}/jobs/prepare.py --zoo {zoo_uri} --chunk-size 8 --out {out}"
    return client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env_vars})


def _finished(client, job_id: str, timeout: float = 600):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED}:
        assert status != JobStatus.STOPPED and time.time() < deadline, status
        time.sleep(1)
    return status, client.get_job_logs(job_id)


def test_prepare_job_fails_in_one_line_when_storage_stays_away_and_a_rerun_completes(
    ray_instance, s3_bucket, zoo, proxy
):
    from ray.job_submission import JobStatus, JobSubmissionClient

    zoo_uri, ids = zoo
    out = f"{s3_bucket}/records"
    from ray._private.worker import get_dashboard_url

    client = JobSubmissionClient(f"http://{get_dashboard_url()}")
    env = {"AWS_ENDPOINT_URL": proxy.endpoint, "PYTHONPATH": REPO}
    # Few attempts, so the job gives up while the store is still away.
    job = _submit(client, zoo_uri, out, {**env, "AWS_MAX_ATTEMPTS": "2"})
    _wait_for(lambda: _files(f"{out}/rejected") >= 3, "three parts prepared")
    proxy.cut()
    status, logs = _finished(client, job)
    proxy.restore()

    assert status == JobStatus.FAILED
    error = [line for line in logs.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "storage stopped answering" in error[0] and "tried 2 times" in error[0], logs
    assert "Traceback" not in logs
    assert read_completion(out) is None  # nothing half-written is marked complete
    fs, writing = storage.filesystem(storage.join(out, WRITING_MARKER))
    assert fs.exists(writing)  # the failed job could not remove its writing marker: storage was away

    rerun = _submit(client, zoo_uri, out, env)
    status, logs = _finished(client, rerun)
    assert status == JobStatus.SUCCEEDED, logs
    # The failed job's writing marker is left behind (storage was away); its process is gone, so the
    # rerun takes over at once instead of waiting for the marker to go stale.
    assert "being written by another prepare" not in logs
    assert f"{len(ids)} chunk records, 0 rejected of {len(ids)} listed" in logs
    _assert_exactly_once(out, ids)


def _running_chunk_task_pid(ray) -> int | None:
    from ray.util.state import list_tasks

    for task in list_tasks(address=state_api_address(ray), filters=[("state", "=", "RUNNING")], detail=True):
        if "_chunk_part" in task.name and task.worker_pid:
            return task.worker_pid
    return None


def test_prepare_survives_a_killed_worker(ray_instance, s3_server, s3_bucket, zoo):
    zoo_uri, ids = zoo
    out = f"{s3_bucket}/records"
    # Storage answers slowly, so each part's task runs for a second or more: long enough for the state
    # API (which reports task states with a delay) to show one running before the whole job is done.
    slow = OutageProxy(int(s3_server.rsplit(":", 1)[1]), latency_s=0.02)
    job = _start_prepare(ray_instance, zoo_uri, out, env={"AWS_ENDPOINT_URL": slow.endpoint})
    _wait_for(lambda: _files(f"{out}/rejected") >= 3, "three parts prepared", job)
    pids: list[int] = []
    _wait_for(
        lambda: pids.append(_running_chunk_task_pid(ray_instance)) or pids[-1], "a running chunk task", job
    )
    os.kill(pids[-1], signal.SIGKILL)  # a worker process of this session's own Ray instance
    summary = ray_instance.get(job, timeout=600)
    slow.close()

    assert _files(f"{out}/rejected") == PARTS
    assert summary.records == len(ids)
    _assert_exactly_once(out, ids)
    fs, marker = storage.filesystem(storage.join(out, COMPLETE_MARKER))
    assert json.loads(fs.cat_file(marker))["records"] == len(ids)


def test_make_zoo_rides_out_a_storage_outage(ray_instance, s3_bucket, proxy):
    out = f"{s3_bucket}/made"
    env = {"AWS_ENDPOINT_URL": proxy.endpoint}
    job = _start(ray_instance, make_zoo, out, preset="tiny", count=16, verbose=False, env=env)
    # The plan is recorded first, then the shards train (seconds each) and write their files: the outage
    # starts before any shard is written and lasts beyond the first writes.
    _wait_for(lambda: _files(out) > 0, "the zoo's plan written", job)
    proxy.cut()
    shards_at_cut = _files(f"{out}/manifest")
    time.sleep(OUTAGE_S)
    proxy.restore()
    summary = ray_instance.get(job, timeout=600)

    assert shards_at_cut == 0 and proxy.turned_away > 0
    assert summary["checkpoints"] == 16 and summary["trained"] == 16
    found = [c.id for c in read_zoo(out, "native") if isinstance(c, Checkpoint)]
    assert len(found) == len(set(found)) == 16
