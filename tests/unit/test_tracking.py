"""MLflow as its users expect it, on a real SQLite store: the training view, artifacts beside the store,
the zoo as the run's dataset, and clear errors for registered models that do not exist."""

import os

import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    # Started from another folder: nothing may land in the working directory.
    monkeypatch.chdir(tmp_path)
    os.makedirs(tmp_path / "elsewhere" / "store")
    return f"sqlite:///{tmp_path}/elsewhere/store/mlflow.db"


def test_runs_open_in_the_training_view_with_artifacts_beside_the_store(store, tmp_path):
    run_id = tracking.start_run(store, "sne", "a-run", {"chunk_size": 16})
    local = tmp_path / "file.txt"
    local.write_text("x")
    tracking.log_artifact(store, run_id, str(local))
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("sne")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    artifacts = tmp_path / "elsewhere" / "store" / "mlartifacts"
    assert list(artifacts.glob("*/artifacts/file.txt")) and not (tmp_path / "mlruns").exists()


def test_an_experiment_made_elsewhere_is_marked_as_training_too(store):
    MlflowClient(store).create_experiment("theirs")
    tracking.start_run(store, "theirs", "r", {})
    assert MlflowClient(store).get_experiment_by_name("theirs").tags[tracking.EXPERIMENT_KIND_TAG] == (
        "custom_model_development"
    )


def test_the_zoo_is_the_runs_dataset(store):
    run_id = tracking.start_run(store, "sne", "r", {})
    tracking.log_zoo_input(store, run_id, "s3://bucket/zoos/small/", "ab" * 32, {"format": "native"})
    (given,) = MlflowClient(store).get_run(run_id).inputs.dataset_inputs
    assert given.dataset.name == "small" and given.dataset.digest == "ab" * 8
    assert given.dataset.source_type == "s3" and "s3://bucket/zoos/small" in given.dataset.source
    assert [(t.key, t.value) for t in given.tags] == [("mlflow.data.context", "training")]


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/nothing/1", "models:/nothing/1"),
        ("models:/nothing/latest", "no version of the registered model 'nothing'"),
        ("models:/x/y/z", "not a registered model URI"),
    ],
)
def test_a_registered_model_that_is_not_there_is_a_clear_error(store, tmp_path, uri, message):
    with pytest.raises(ValueError, match=message):
        tracking.download_model(store, uri, str(tmp_path / "dst"))


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_does_not_answer_is_refused_and_one_that_does_is_not():
    import http.server
    import threading

    with pytest.raises(ValueError, match="does not answer"):
        tracking.check_reachable(f"http://127.0.0.1:{_closed_port()}", timeout_s=2)
    # Any HTTP answer is a server (one behind authentication may refuse /health).
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tracking.check_reachable(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    tracking.check_reachable("sqlite:////nowhere/mlflow.db")  # a local store is created on use


def test_train_with_an_unreachable_server_stops_before_any_work(run_job, tmp_path):
    storage_dir = tmp_path / "runs"
    done = run_job(
        "train.py",
        *("--zoo", str(tmp_path / "zoo"), "--storage", str(storage_dir)),
        *("--tracking-uri", f"http://127.0.0.1:{_closed_port()}"),
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: the MLflow tracking server"), done.stderr
    assert "Traceback" not in done.stderr and not storage_dir.exists()
