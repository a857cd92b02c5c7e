"""The cluster path for real, as the README tells a user to walk it: its commands, read from README.md and
run as written in a fresh copy of the checkout (cluster/local.sh up, make_zoo against the cluster, `ray job
submit` of train, predict with the registered encoder, down), then a Tune sweep submitted to the same cluster.

Runs in its own pytest process (see the Makefile): it starts a Ray head of its own, and two local Ray
clusters must never run at once. Its ports are not the defaults, so a cluster a developer keeps up is
left alone.
"""

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PORTS = {
    "SNE_S3_PORT": "9211",
    "SNE_MLFLOW_PORT": "5211",
    "SNE_RAY_PORT": "6411",
    "SNE_DASHBOARD_PORT": "8311",
}
STATE = os.path.join("runs", "local-cluster")  # the README's path, inside the copy


def readme_cluster_commands() -> list[str]:
    """The shell commands of the README's local-cluster block, continuation lines joined."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)
    (block,) = [b for b in blocks if "cluster/local.sh up" in b]
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


def _checkout_copy(dst) -> str:
    """The files a clone of this working tree holds (tracked and new, not ignored) and the venv, linked."""
    listed = subprocess.run(
        ["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if os.path.isfile(os.path.join(ROOT, rel)):
            os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), os.path.join(dst, rel))
    os.symlink(os.path.join(ROOT, ".venv"), os.path.join(dst, ".venv"))
    return str(dst)


# A user's MLflow token, as they would hold for a server behind authentication (this one ignores it).
TOKEN = f"mlflow-token-{uuid.uuid4().hex}"


def _user_env() -> dict:
    """A user's shell before `source env.sh`: nothing of a cluster or S3 set, an MLflow token, the test's
    ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "SNE_"))}
    env.update(PORTS, MLFLOW_TRACKING_TOKEN=TOKEN)
    return env


def _sh(command: str, cwd: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _cluster_env(checkout: str) -> dict:
    """The environment after the README's `source runs/local-cluster/env.sh`."""
    dumped = _sh(f"source {STATE}/env.sh && env -0", checkout, _user_env(), timeout=30)
    assert dumped.returncode == 0, dumped.stderr
    return dict(line.split("=", 1) for line in dumped.stdout.split("\0") if "=" in line)


@pytest.fixture
def readme_walk(tmp_path):
    """Runs the README's block up to `down` in a fresh copy; brings the cluster down with its last line."""
    commands = readme_cluster_commands()
    assert commands[0] == "cluster/local.sh up" and commands[-1] == "cluster/local.sh down", commands
    checkout = _checkout_copy(tmp_path / "checkout")
    walk = _sh("\n".join(commands[:-1]), checkout, _user_env(), timeout=1500)
    try:
        yield checkout, walk
    finally:
        state = os.path.join(checkout, STATE)
        pids = [
            int(Path(state, f"{p}.pid").read_text())
            for p in ("s3", "mlflow", "ray")
            if os.path.exists(os.path.join(state, f"{p}.pid"))
        ]
        down = _sh(commands[-1], checkout, _user_env(), timeout=120)
        assert down.returncode == 0, down.stderr
        # Nothing `up` started survives: each part's process group is gone.
        for pgid in pids:
            alive = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
            assert not alive, f"processes of group {pgid} still running: {alive}"


def test_the_readme_cluster_walkthrough_runs_as_written(readme_walk):
    checkout, walk = readme_walk
    out = out_walk = walk.stdout + walk.stderr
    assert walk.returncode == 0, out[-6000:]
    assert "succeeded" in walk.stdout and "test Kendall tau" in out, out[-4000:]
    # Quiet by default: the submitted training job prints its stages and results, not Ray's INFO logs.
    job_logs = out.split("Tailing logs until the job exits")[-1]
    assert " INFO " not in job_logs and "Requesting resources" not in job_logs, job_logs[-4000:]
    assert "predictions of test_accuracy written to s3://sne/predictions.csv" in out, out[-3000:]

    env = _cluster_env(checkout)
    import s3fs
    from mlflow.tracking import MlflowClient

    s3 = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]},
        key=env["AWS_ACCESS_KEY_ID"],
        secret=env["AWS_SECRET_ACCESS_KEY"],
    )
    assert s3.ls("sne/zoos/tiny/shards"), "the zoo is not in S3"
    assert any("-c16-v" in p for p in s3.ls("sne/runs/chunk-records")), "no chunk records in S3"
    assert s3.exists("sne/predictions.csv")

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("sne")
    # Opens in MLflow's training-runs view, with the zoo as the run's dataset.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and "test_kendall_tau" in run.data.metrics
    (zoo_input,) = run.inputs.dataset_inputs
    assert '"uri": "s3://sne/zoos/tiny"' in zoo_input.dataset.source and zoo_input.dataset.digest
    assert s3.glob("sne/mlflow/**/encoder.safetensors"), "MLflow artifacts are not in the S3 bucket"
    (version,) = client.search_model_versions("name = 'sne-encoder'")
    assert version.run_id == run.info.run_id and version.tags["preset"] == "paper"
    by_version = _sh(
        ".venv/bin/python jobs/predict.py --encoder models:/sne-encoder/1 --zoo s3://sne/zoos/tiny --out v1.csv",
        checkout,
        env,
        300,
    )
    assert by_version.returncode == 0 and "48 predictions" in by_version.stdout, by_version.stderr[-3000:]

    # A job started with python against the cluster's jobs API address gets a one-line error and writes
    # nothing; env.sh's RAY_ADDRESS is the head's GCS address, which the walkthrough's make_zoo joined.
    wrong = dict(env, RAY_ADDRESS=env["RAY_API_SERVER_ADDRESS"])
    refused = _sh(
        ".venv/bin/python jobs/make_zoo.py --out s3://sne/zoos/refused --preset tiny", checkout, wrong, 120
    )
    assert refused.returncode == 2 and "jobs API" in refused.stderr and "Traceback" not in refused.stderr
    assert not s3.exists("sne/zoos/refused")

    # The same cluster runs a Tune sweep submitted as a job: one parent run, a child per trial,
    # the heatmap in the S3 artifact store.
    swept = _sh(
        ".venv/bin/ray job submit --working-dir . "
        """--runtime-env-json '{"excludes": [".venv", "runs", "data", ".git", "tests"]}' -- """
        "python jobs/tune.py --zoo s3://sne/zoos/tiny --storage s3://sne/runs --preset debug "
        "--chunk-sizes 8,16 --invariance-weights 0 --max-epochs 1 --name cluster-sweep",
        checkout,
        env,
    )
    out = swept.stdout + swept.stderr
    assert swept.returncode == 0 and "succeeded" in swept.stdout, out[-4000:]
    assert "best: {'chunk_size'" in out
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`mlflow.runName` = 'cluster-sweep'")
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.data.params["chunk_size"] for c in children) == ["16", "8"]
    assert s3.glob("sne/mlflow/**/val_tau_heatmap.png"), "the sweep's heatmap is not in S3"
    # refresh: s3fs cached this listing before the sweep wrote chunk size 8
    prepared = s3.ls("sne/runs/chunk-records", refresh=True)
    assert any("-c8-v" in p for p in prepared), "chunk size 8 was not prepared"
    # Sweep trials do not add versions of the registered encoder.
    assert len(client.search_model_versions("name = 'sne-encoder'")) == 1

    # The S3 secret (random per cluster) and the user's MLflow token appear nowhere a job writes: not in any
    # command's output, the submitted jobs' logs or runtime environments, the files Ray keeps for its session
    # (logs, shipped working directories), the servers' logs, the MLflow store, or any object in the bucket
    # (zoo, chunk records, checkpoints, MLflow artifacts).
    places = {
        "walkthrough output": out_walk,
        "predict output": by_version.stdout + by_version.stderr,
        "refused make_zoo output": refused.stdout + refused.stderr,
        "sweep output": swept.stdout + swept.stderr,
    }
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(env["RAY_API_SERVER_ADDRESS"])
    for job in jobs.list_jobs():  # submitted jobs, and drivers that joined (make_zoo): no logs kept for those
        places[f"job {job.submission_id or job.job_id}: info"] = str(job)
        if job.submission_id:
            places[f"job {job.submission_id}: logs"] = jobs.get_job_logs(job.submission_id)
    local_files = [p for p in Path(checkout, STATE).rglob("*") if p.is_file() and p.name != "env.sh"]
    # Ray's session: its logs, and the working directories the jobs shipped (runtime_resources).
    session = [p for p in Path("/tmp/ray/session_latest").resolve().rglob("*") if p.is_file()]
    for path in local_files + session:
        places[str(path)] = path.read_bytes().decode("latin-1")
    for key in s3.find("sne"):
        places[f"s3://{key}"] = s3.cat_file(key).decode("latin-1")
    assert len(session) > 10 and len(places) > 50
    secrets = {"AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"], "MLFLOW_TRACKING_TOKEN": TOKEN}
    leaks = [
        f"{name} in {where}" for where, text in places.items() for name, v in secrets.items() if v in text
    ]
    assert not leaks, leaks
