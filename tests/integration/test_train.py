"""Ray Train on a real (tiny) zoo through the S3 server, with MLflow logging, resume and prediction."""

import dataclasses
import json
import math
import time

import numpy as np
import pytest
import torch
from conftest import run_then_kill

from pipeline import storage, tracking
from pipeline.config import debug, from_dict
from pipeline.driver import run_training
from pipeline.evaluation import regression_metrics
from pipeline.predict import load_encoder, plot_predictions, predict_zoo, write_predictions

pytestmark = pytest.mark.integration


def _config(bucket, tmp_path, **overrides):
    return from_dict(
        {
            "zoo": f"{bucket}/zoo",
            "storage": f"{bucket}/runs",
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "epochs": 3,
            "num_workers": 2,
            **overrides,
        },
        debug(),
    )


def test_two_worker_fit_through_s3_logs_everything_to_mlflow(tiny_zoo, tmp_path):
    config = _config(tiny_zoo, tmp_path, peer_agreement=True)
    final = run_training(config, log=lambda _: None)
    assert math.isfinite(final["test_kendall_tau"]) and math.isfinite(final["statnn_test_kendall_tau"])
    assert sum(final["split"].values()) == 48
    fs, path = storage.filesystem(final["checkpoint_uri"])
    assert final["checkpoint_uri"].startswith(f"{tiny_zoo}/runs/train/") and fs.exists(path)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(final["tracking_uri"])
    run = client.get_run(final["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["chunk_size"] == "16" and run.data.params["task"] == "random"
    # make_zoo records each network's architecture, so SNE reads every one's probe as well.
    assert run.data.params["probe_summary"] == "True" and run.data.params["n_probed"] == "48"
    # Every training network is a classifier with probabilities on the probes: all make the peer consensus.
    assert run.data.params["peer_agreement"] == "True"
    assert run.data.params["n_peer_reference"] == str(final["split"]["train"])
    assert run.data.tags["zoo_fingerprint"] and run.data.tags["chunk_size"] == "16"
    assert [m.step for m in client.get_metric_history(final["run_id"], "val_kendall_tau")] == [0, 1, 2]
    epoch_seconds = client.get_metric_history(final["run_id"], "train_epoch_seconds")
    assert [m.step for m in epoch_seconds] == [0, 1, 2] and all(m.value > 0 for m in epoch_seconds)
    assert final["last_epoch_train_seconds"] == pytest.approx(epoch_seconds[-1].value)
    assert [m.step for m in client.get_metric_history(final["run_id"], "val_seconds")] == [0, 1, 2]
    assert run.data.metrics["test_kendall_tau"] == pytest.approx(final["test_kendall_tau"])
    assert run.data.metrics["train_mse"] == pytest.approx(final["train_mse"]) and final["train_mse"] > 0
    artifacts = {a.path for a in client.list_artifacts(final["run_id"])}
    assert {"encoder", "test_scatter.png", "test_metrics.txt", "test_predictions.csv"} <= artifacts
    assert {a.path for a in client.list_artifacts(final["run_id"], "encoder")} == {
        "encoder/encoder.json",
        "encoder/encoder.safetensors",
        "encoder/training_ids.json",
        "encoder/peers.json",
        "encoder/peers.safetensors",
        "encoder/MLmodel",  # the folder is an MLflow model too (registered as a version of sne-encoder)
    }
    # The exported encoder knows the training datasets and the network inputs it reads.
    encoder, _ = load_encoder(final["run_id"], final["tracking_uri"])
    assert len(encoder.cfg.datasets) >= 2 and list(encoder.cfg.datasets) == sorted(encoder.cfg.datasets)
    assert encoder.cfg.network_inputs == ("probe", "peer")


def test_a_rerun_with_the_same_seed_trains_the_same_encoder(tiny_zoo, tmp_path):
    """Two workers, each handed its rows by a fixed rule: the same config gives the same run, twice."""
    config = _config(tiny_zoo, tmp_path, epochs=2, statnn=False)
    runs = [run_training(config, log=lambda _: None) for _ in range(2)]
    assert runs[0]["run_id"] != runs[1]["run_id"]
    client = tracking._client(runs[0]["tracking_uri"])
    losses = [[m.value for m in client.get_metric_history(r["run_id"], "train_loss")] for r in runs]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    tables = [_artifact_table(r, "test_predictions.csv", tmp_path / f"run{i}") for i, r in enumerate(runs)]
    assert tables[0] == tables[1]


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_zoo, tmp_path, ray_instance):
    config = _config(tiny_zoo, tmp_path, run_name="resume-me", epochs=6, statnn=False)

    def resumable() -> bool:
        # Ray Train's controller records a reported checkpoint in its snapshot asynchronously, after the
        # workers' report returns (epoch 1 can be logged before it); from then on a run of the same name
        # resumes from that checkpoint.
        fs, path = storage.filesystem(f"{config.storage}/train/resume-me/checkpoint_manager_snapshot.json")
        fs.invalidate_cache()
        return fs.exists(path)

    run_then_kill(ray_instance, run_training, (config,), resumable, "a recorded checkpoint")

    final = run_training(config, log=lambda _: None)
    assert final["run_name"] == "resume-me"
    epochs = [
        m.value for m in tracking._client(final["tracking_uri"]).get_metric_history(final["run_id"], "epoch")
    ]
    # Resumed, not restarted: epoch 0 trained once, and the run reached the last epoch.
    assert epochs.count(0) == 1 and max(epochs) == 5


def test_a_tracking_server_lost_mid_run_costs_no_result(
    tiny_zoo, tmp_path, ray_instance, mlflow_server, run_job
):
    from pipeline.driver import ResultsNotLogged

    config = _config(tiny_zoo, tmp_path, run_name="server-lost", epochs=4, statnn=False)
    config = dataclasses.replace(config, tracking_uri=mlflow_server.uri)
    # MLflow's own retry settings decide how long each call waits for the server (docs/reliability.md);
    # short here, so the run meets the outage within seconds.
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    job = ray_instance.remote(num_cpus=0.25, max_retries=0, runtime_env={"env_vars": env})(
        run_training
    ).remote(config, progress=False, log=lambda _: None)
    client = tracking._client(mlflow_server.uri)

    def first_epoch_logged() -> bool:
        run_id = tracking.find_run(mlflow_server.uri, config.experiment, "server-lost")
        return run_id is not None and bool(client.get_metric_history(run_id, "val_kendall_tau"))

    deadline = time.time() + 400
    while not first_epoch_logged():
        if ray_instance.wait([job], timeout=0)[0]:
            ray_instance.get(job)  # ended before its first epoch: its error, or the failure below
        assert time.time() < deadline and not ray_instance.wait([job], timeout=0)[0], "no epoch logged"
        time.sleep(1)
    mlflow_server.stop()
    with pytest.raises(ResultsNotLogged) as lost:
        ray_instance.get(job, timeout=600)

    # Training went on to the end; its results are in storage, and the error says how to log them.
    message = str(lost.value)
    kept = f"{config.storage}/train/server-lost/result"
    assert f"python jobs/log_results.py {kept}" in message
    fs, path = storage.filesystem(kept)
    assert {"encoder", "final_metrics.json", "run.json", "test_predictions.csv"} <= {
        p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)
    }
    final = json.loads(fs.cat_file(f"{path}/final_metrics.json"))

    mlflow_server.start()
    relogged = run_job("log_results.py", kept, "--tracking-uri", mlflow_server.uri)
    assert relogged.returncode == 0, relogged.stderr
    run_id = tracking.find_run(mlflow_server.uri, config.experiment, "server-lost")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_kendall_tau"] == pytest.approx(final["test_kendall_tau"])
    assert {a.path for a in client.list_artifacts(run_id)} >= {"encoder", "test_predictions.csv"}
    assert "models:/sne-encoder/1" in relogged.stdout
    encoder, _ = load_encoder("models:/sne-encoder/1", mlflow_server.uri)
    assert encoder is not None
    again = run_job("log_results.py", kept, "--tracking-uri", mlflow_server.uri)
    assert again.returncode == 2 and "finished already" in again.stderr  # no second encoder version


def test_predict_on_an_architecture_never_seen_in_training(tiny_zoo, tmp_path):
    config = _config(
        tiny_zoo,
        tmp_path,
        task="cross-architecture",
        train_families=("mlp", "cnn", "cnn-s"),
        test_families=("smallcnn",),
        statnn=False,
        peer_agreement=True,  # predict must compare each network with the exported consensus as training did
    )
    final = run_training(config, log=lambda _: None)
    assert set(final["per_subset"][-1]["subset"].split("=")) == {"family", "smallcnn"}
    result = predict_zoo(final["run_id"], f"{tiny_zoo}/zoo", tracking_uri=final["tracking_uri"])
    rows = result["rows"]
    assert len(rows) == 48 and {r["family"] for r in rows} == {"mlp", "cnn", "cnn-s", "smallcnn"}
    assert result["unprobed"] == 0  # predict probes each network as prepare did
    assert result["without_peers"] == 0  # every dataset had training networks in the consensus
    assert result["unseen_datasets"] == {}  # and each has its dataset vector, read as in training
    assert all(np.isfinite(r["prediction"]) for r in rows)
    # The families it trained on are marked and left out of the scores: what remains is the run's test split,
    # predicted as the run predicted it.
    assert result["same_zoo"] and result["metrics_all"]["n"] == 48
    assert {r["used_in_training"] for r in rows if r["family"] != "smallcnn"} == {"train", "val"}
    unseen = {r["id"]: r["prediction"] for r in rows if not r["used_in_training"]}
    tested = _artifact_table(final, "test_predictions.csv", tmp_path)
    assert set(unseen) == set(tested) and result["metrics"]["n"] == final["split"]["test"]
    np.testing.assert_allclose(
        [unseen[i] for i in tested], [float(r["prediction"]) for r in tested.values()], rtol=1e-4, atol=1e-5
    )
    assert result["metrics"]["kendall_tau"] == pytest.approx(final["test_kendall_tau"], abs=1e-6)
    # The run's scores on its own training networks are those networks' scores, as predict sees them (each
    # compared with the consensus of the other training networks, as in training).
    fitted = [r for r in rows if r["used_in_training"] == "train"]
    assert len(fitted) == final["split"]["train"]
    fit = regression_metrics(*(np.array([r[k] for r in fitted]) for k in ("prediction", "true")))
    assert fit["kendall_tau"] == pytest.approx(final["train_kendall_tau"], abs=1e-6)
    assert fit["mse"] == pytest.approx(final["train_mse"], rel=1e-4)
    # Each epoch's validation, every worker scoring the validation networks in its share of the record files
    # and gathering the others' scores, covered the whole validation split as predict scores it.
    held = [r for r in rows if r["used_in_training"] == "val"]
    assert len(held) == final["split"]["val"] > 2
    chosen = regression_metrics(*(np.array([r[k] for r in held]) for k in ("prediction", "true")))
    assert chosen["kendall_tau"] == pytest.approx(final["best_val_kendall_tau"], abs=1e-6)

    # Its outputs go to the bucket as readily as to a local folder (a `ray job submit` run keeps no local files).
    out = f"{tiny_zoo}/predictions"
    write_predictions(rows, f"{out}/table.csv")
    plot_predictions(result, f"{out}/scatter.png")
    storage.write_json(f"{out}/metrics.json", {k: v for k, v in result.items() if k != "rows"})
    fs, path = storage.filesystem(out)
    assert fs.cat_file(f"{path}/table.csv").decode().count("\n") == 49
    assert fs.cat_file(f"{path}/scatter.png").startswith(b"\x89PNG")
    assert json.loads(fs.cat_file(f"{path}/metrics.json"))["metrics"]["n"] == final["split"]["test"]


def _artifact_table(final: dict, name: str, tmp_path) -> dict[str, dict]:
    """A CSV artifact of a training run as {id: row}."""
    import csv

    path = tracking.download_artifacts(final["tracking_uri"], final["run_id"], name, str(tmp_path))
    with open(path) as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def test_paper_preset_trains_on_weights_alone_and_is_recorded(tiny_zoo, tmp_path):
    """`--preset paper` through Ray Train (two DDP workers): the published blocks, no side input, and MLflow
    records the preset and each switch."""
    from pipeline.config import paper

    base = dataclasses.replace(paper(), hidden=16, heads=2, batch_size=8)
    config = from_dict(
        {
            "zoo": f"{tiny_zoo}/zoo",
            "storage": f"{tiny_zoo}/runs",
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "epochs": 2,
            "statnn": False,
        },
        base,
    )
    final = run_training(config, log=lambda _: None)
    assert math.isfinite(final["test_kendall_tau"])
    from mlflow.tracking import MlflowClient

    params = MlflowClient(final["tracking_uri"]).get_run(final["run_id"]).data.params
    assert params["preset"] == "paper" and params["blocks"] == "paper"
    assert params["probe_summary"] == params["layer_statistics"] == params["dataset_vectors"] == "False"
    encoder, _ = load_encoder(final["run_id"], final["tracking_uri"])
    assert encoder.cfg.blocks == "paper" and not encoder.network_inputs and encoder.dataset_vectors is None
    # The encoder is a registered model version, loaded by name as predict loads it, and through MLflow's
    # own pyfunc loader; its artifacts sit beside the SQLite store.
    assert final["model_uri"] == "models:/sne-encoder/1"
    # The results are kept in storage beside the checkpoints too, whatever becomes of the tracking server.
    assert final["results_uri"] == f"{config.storage}/train/{final['run_name']}/result"
    kept, _ = load_encoder(f"{final['results_uri']}/encoder")
    assert all(
        torch.equal(a, b)
        for a, b in zip(kept.state_dict().values(), encoder.state_dict().values(), strict=True)
    )
    fs, path = storage.filesystem(f"{final['results_uri']}/final_metrics.json")
    assert json.loads(fs.cat_file(path))["test_kendall_tau"] == pytest.approx(final["test_kendall_tau"])
    by_name, _ = load_encoder("models:/sne-encoder/latest", final["tracking_uri"])
    assert all(
        torch.equal(a, b)
        for a, b in zip(by_name.state_dict().values(), encoder.state_dict().values(), strict=True)
    )
    assert list((tmp_path / "mlartifacts").glob(f"{final['run_id']}/artifacts/encoder/MLmodel"))
    import mlflow.pyfunc
    import pandas as pd

    mlflow.set_tracking_uri(final["tracking_uri"])
    try:
        table = mlflow.pyfunc.load_model("models:/sne-encoder/1").predict(pd.DataFrame({"zoo": [config.zoo]}))
    finally:
        mlflow.set_tracking_uri(None)
    assert len(table) == 48 and table["prediction"].notna().all()


def _big_resnet(dataset: str = "shapes"):
    """A 25 M-parameter ResNet-18 (width 96) as initialised, its accuracies measured on the dataset."""
    from pipeline import families
    from pipeline.datasets import IMAGE_SIZE, load
    from pipeline.generate import _evaluate

    torch.manual_seed(0)
    architecture = families.resnet18_architecture(10, 1, IMAGE_SIZE, width=96)
    module = families.build_module(architecture).eval()
    data = load(dataset, IMAGE_SIZE)
    test_accuracy, test_loss = _evaluate(
        module, torch.tensor(data.x_test[:200]), torch.tensor(data.y_test[:200])
    )
    train_accuracy, train_loss = _evaluate(
        module, torch.tensor(data.x_train[:200]), torch.tensor(data.y_train[:200])
    )
    return families.checkpoint_from_module(
        module,
        id="resnet18-w96",
        family="resnet18",
        dataset=dataset,
        architecture=architecture,
        properties={"test_accuracy": test_accuracy, "train_accuracy": train_accuracy},
    )


def test_chunk_budget_steps_mix_a_25m_parameter_network_with_small_ones(tiny_zoo, tmp_path):
    """Batches by chunks: one step holds the 25 M-parameter network alone or many small ones, every network
    is trained once per epoch on two DDP workers whose shards make different numbers of steps."""
    from mlflow.tracking import MlflowClient

    from pipeline.zoo import Checkpoint, native, read_zoo

    small = [c for c in read_zoo(f"{tiny_zoo}/zoo") if isinstance(c, Checkpoint)]
    big = _big_resnet()
    assert big.num_params > 25_000_000 and max(c.num_params for c in small) < 30_000
    native.write_zoo(f"{tiny_zoo}/mixed", [*small, big], shard_size=16)
    # A split seed that puts the big network among the training networks.
    from pipeline.splits import assign_splits

    everyone = [*small, big]
    ids, fams, sets = ([getattr(c, k) for c in everyone] for k in ("id", "family", "dataset"))
    seed = next(s for s in range(50) if assign_splits(ids, fams, sets, seed=s)[big.id] == "train")
    budget = 4000
    config = from_dict(
        {
            "zoo": f"{tiny_zoo}/mixed",
            "storage": f"{tiny_zoo}/runs",
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "epochs": 2,
            "statnn": False,
            "chunk_budget": budget,
            "batch_size": 16,
            "split_seed": seed,
        },
        debug(),  # compact blocks: the paper's attention over all of a layer's chunks is quadratic in them
    )
    final = run_training(config, log=lambda _: None)
    assert math.isfinite(final["test_kendall_tau"])
    client = MlflowClient(final["tracking_uri"])

    def history(name: str) -> list[float]:
        return [m.value for m in client.get_metric_history(final["run_id"], name)]

    assert history("train_networks") == [final["split"]["train"]] * 2  # each network once per epoch
    assert all(0 < v <= budget for v in history("train_largest_shared_step_chunks"))
    assert all(v > 10 * budget for v in history("train_largest_network_chunks"))  # the big one, alone
    # Whichever worker trains the big network carries most of the epoch's chunks, and the metrics show it.
    for busiest, least in zip(
        history("train_worker_chunks_max"), history("train_worker_chunks_min"), strict=True
    ):
        assert busiest >= history("train_largest_network_chunks")[0] > least > 0
