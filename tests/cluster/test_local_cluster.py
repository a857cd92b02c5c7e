"""The cluster path for real: cluster/local.sh up, `ray job submit` of make_zoo and train, down.

Runs in its own pytest process (see the Makefile): it starts a Ray head of its own, and two local
Ray clusters must never run at once.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
PORTS = {
    "SNE_S3_PORT": "9211",
    "SNE_MLFLOW_PORT": "5211",
    "SNE_RAY_PORT": "6411",
    "SNE_DASHBOARD_PORT": "8311",
}


def _env(state_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_ADDRESS"))}
    env.update(PORTS, SNE_CLUSTER_DIR=str(state_dir), SNE_BUCKET="sne", PYTHON=sys.executable)
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{PORTS['SNE_S3_PORT']}",
        MLFLOW_S3_ENDPOINT_URL=f"http://127.0.0.1:{PORTS['SNE_S3_PORT']}",
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{PORTS['SNE_MLFLOW_PORT']}",
        RAY_ADDRESS=f"http://127.0.0.1:{PORTS['SNE_DASHBOARD_PORT']}",
    )
    return env


def _sh(args, env, timeout=600):
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _submit(env, *job_args):
    excludes = '{"excludes": [".venv", "runs", "data", ".git", "tests"]}'
    return _sh(
        [
            f"{BIN}/ray",
            "job",
            "submit",
            "--working-dir",
            ".",
            "--runtime-env-json",
            excludes,
            "--",
            "python",
            *job_args,
        ],
        env,
        timeout=900,
    )


@pytest.fixture
def local_cluster(tmp_path):
    env = _env(tmp_path / "cluster")
    up = _sh(["bash", "cluster/local.sh", "up"], env, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield env
    finally:
        pids = []
        for part in ("s3", "mlflow", "ray"):
            pid_file = tmp_path / "cluster" / f"{part}.pid"
            if pid_file.exists():
                pids.append(int(pid_file.read_text()))
        down = _sh(["bash", "cluster/local.sh", "down"], env, timeout=120)
        assert down.returncode == 0, down.stderr
        # Nothing `up` started survives: each part's process group is gone.
        for pgid in pids:
            alive = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
            assert not alive, f"processes of group {pgid} still running: {alive}"


def test_ray_job_submit_trains_with_everything_in_s3_and_the_mlflow_server(local_cluster):
    env = local_cluster
    status = _sh(["bash", "cluster/local.sh", "status"], env)
    assert status.returncode == 0 and status.stdout.count(": up") == 3, status.stdout

    made = _submit(env, "jobs/make_zoo.py", "--out", "s3://sne/zoo", "--preset", "tiny")
    assert made.returncode == 0 and "succeeded" in made.stdout, made.stdout[-3000:] + made.stderr[-3000:]
    trained = _submit(
        env,
        *("jobs/train.py", "--zoo", "s3://sne/zoo", "--storage", "s3://sne/runs"),
        *("--preset", "debug", "--epochs", "2", "--run-name", "cluster-run", "--no-statnn"),
    )
    out = trained.stdout + trained.stderr
    assert trained.returncode == 0 and "succeeded" in trained.stdout, out[-4000:]
    assert "test Kendall tau" in out

    import s3fs
    from mlflow.tracking import MlflowClient

    s3 = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]}, key="testing", secret="testing"
    )
    assert s3.ls("sne/zoo/shards"), "the zoo is not in S3"
    assert any("-c16-v" in p for p in s3.ls("sne/runs/chunk-records")), "no chunk records in S3"
    assert any("checkpoint_" in p for p in s3.ls("sne/runs/train/cluster-run")), "no checkpoint in S3"

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs(
        [client.get_experiment_by_name("sne").experiment_id], "tags.`mlflow.runName` = 'cluster-run'"
    )
    assert run.info.status == "FINISHED" and "test_kendall_tau" in run.data.metrics
    assert s3.glob("sne/mlflow/**/encoder.safetensors"), "MLflow artifacts are not in the S3 bucket"
    # Credentials never reach MLflow.
    assert "testing" not in str(run.data.params) + str(run.data.tags)

    # The same cluster runs a Tune sweep submitted as a job: one parent run, a child per trial,
    # the heatmap in the S3 artifact store.
    swept = _submit(
        env,
        *("jobs/tune.py", "--zoo", "s3://sne/zoo", "--storage", "s3://sne/runs", "--preset", "debug"),
        *(
            "--chunk-sizes",
            "8,16",
            "--invariance-weights",
            "0",
            "--max-epochs",
            "1",
            "--name",
            "cluster-sweep",
        ),
    )
    out = swept.stdout + swept.stderr
    assert swept.returncode == 0 and "succeeded" in swept.stdout, out[-4000:]
    assert "best: {'chunk_size'" in out
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("sne").experiment_id], "tags.`mlflow.runName` = 'cluster-sweep'"
    )
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.data.params["chunk_size"] for c in children) == ["16", "8"]
    assert s3.glob("sne/mlflow/**/val_tau_heatmap.png"), "the sweep's heatmap is not in S3"
    # refresh: s3fs cached this listing before the sweep wrote chunk size 8
    prepared = s3.ls("sne/runs/chunk-records", refresh=True)
    assert any("-c8-v" in p for p in prepared), "chunk size 8 was not prepared"
