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
