"""The driver function shared by ``jobs/train.py`` and every Ray Tune trial, ``run_training``: a sequence of
named stages, each a function of this module.

prepare_records (cached chunk records) → split_records → fit_on_training_networks (target scaler,
training datasets, peer consensus) → start_run (MLflow, resumed by run name) → train_encoder (Ray Train,
the training split streamed per epoch) → evaluate (test split once, and the training networks) →
statnn_baseline → export_results (storage, then MLflow). Returns a plain dict of final metrics and URIs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import storage, tracking
from pipeline.config import TrainConfig, from_dict, to_dict
from pipeline.data import (
    iter_record_index,
    load_chunk_dataset,
    prepare_chunk_records,
    pyarrow_filesystem,
    quiet_data_progress,
    read_record_index,
    record_files,
)
from pipeline.evaluation import format_table, regression_metrics, scatter_plot, subset_metrics
from pipeline.probes import PeerConsensus, probabilities_of
from pipeline.split_reads import probe_rows, select_and_attach_peers, select_ids, split_batches
from pipeline.splits import assign_splits, split_fingerprint


def fit_peer_consensus(records_uri: str, train_ids: list[str]) -> PeerConsensus:
    """The consensus on the probes of the training networks (pipeline.probes.PeerConsensus), summed in one
    streaming pass over the records' probe column."""
    wanted = pa.array(sorted(train_ids), pa.string())
    consensus = PeerConsensus()
    for table in iter_record_index(records_uri, ("id", "dataset", "probe_probabilities")):
        rows = probe_rows(select_ids(table, wanted))
        consensus.add(
            [r["id"] for r in rows], [r["dataset"] for r in rows], [probabilities_of(r) for r in rows]
        )
    return consensus


def split_datasets(
    records_uri: str,
    assignment: dict[str, str],
    peers: PeerConsensus | None = None,
    shuffle_seed: int | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> dict:
    """Lazy Ray Datasets of chunk records per split, each record with its peer agreement where ``peers`` is
    given. Nothing is held: every pass streams the records from storage and keeps its split's rows (a
    vectorised id filter), so a run's memory does not grow with the zoo. With ``shuffle_seed`` the training
    split reads its files in a fresh order each epoch (``load_chunk_dataset``); the others in file order."""
    out = {}
    for split in splits:
        ids = pa.array(sorted(i for i, s in assignment.items() if s == split), pa.string())
        seed = shuffle_seed if split == "train" else None
        ds = load_chunk_dataset(records_uri, shuffle_seed=seed).map_batches(
            select_and_attach_peers,
            batch_format="pyarrow",
            fn_kwargs={"ids": ids, "peers": peers},
            num_cpus=0.25,
        )
        ds.context.execution_options.preserve_order = True  # blocks in read order, not finishing order
        out[split] = ds
    return out


def _baseline_rows(batch: dict, property_name: str, flat: bool) -> dict:
    from pipeline.baselines import baseline_row
    from pipeline.collate import records_from_batch

    records = records_from_batch(batch)
    return {
        "id": np.array([str(r["id"]) for r in records]),
        "row": np.array([baseline_row(r, property_name, flat) for r in records], dtype=object),
    }


def baseline_rows(records_uri: str, ids: set[str], property_name: str, flat: bool = False) -> dict[str, dict]:
    """What the feature baselines read of each listed network (``baselines.fit_baseline``'s rows), computed
    in one parallel pass over the chunk records; ``flat`` adds the flattened weights (the mlp baseline)."""
    wanted = pa.array(sorted(ids), pa.string())
    ds = load_chunk_dataset(records_uri).map_batches(
        select_ids, batch_format="pyarrow", fn_kwargs={"ids": wanted}, num_cpus=0.25
    )
    rows = ds.map_batches(
        _baseline_rows,
        batch_format="numpy",
        batch_size=64,
        num_cpus=0.5,
        fn_kwargs={"property_name": property_name, "flat": flat},
    ).take_all()
    return {r["id"]: r["row"] for r in rows}


def run_statnn(
    records_uri: str, assignment: dict[str, str], property_name: str, seed: int
) -> dict[str, float]:
    """STATNN on a split (settings chosen on validation, then fitted on train + validation); id → test
    prediction."""
    from pipeline.baselines import fit_baseline

    rows = baseline_rows(records_uri, set(assignment), property_name)
    return fit_baseline("statnn", rows, assignment, seed)[0]


def _new_run_name(config: TrainConfig, fingerprint: str) -> str:
    return f"sne-{fingerprint[:8]}-c{config.chunk_size}-{time.strftime('%Y%m%d-%H%M%S')}"


def epoch_progress(total_epochs: int):
    """A Ray Train callback that prints one line per epoch (rank 0's metrics), from the controller."""
    from ray.train import UserCallback

    class EpochProgress(UserCallback):
        def __init__(self) -> None:
            self.started = time.time()

        def after_report(self, run_context, metrics, checkpoint) -> None:
            m = metrics[0] if metrics else {}
            if "epoch" not in m:
                return
            unplanned = int(m.get("train_networks_without_invariance", 0))
            note = (
                f"  ({unplanned} networks without a known permutation: task loss only)" if unplanned else ""
            )
            print(
                f"epoch {int(m['epoch']) + 1}/{total_epochs}: train loss {m['train_loss']:.4f}  "
                f"val tau {m['val_kendall_tau']:.3f} (best {m['best_val_kendall_tau']:.3f})  "
                f"{time.time() - self.started:.0f} s{note}",
                flush=True,
            )

    return EpochProgress()


class ResultsNotLogged(RuntimeError):
    """The run finished and its results are in storage, but the tracking server did not take them."""


# Above this a network's training step alone costs 1-2.4 GB (a 1 M-parameter MLP or a 10 M ResNet, BENCHMARKS.md),
# so batches counted in networks may not fit: run_training says so when no chunk budget is set.
BIG_NETWORK_PARAMS = 1_000_000
RESULT_FILES = ("test_scatter.png", "test_metrics.txt", "test_metrics.json", "test_predictions.csv")


def _log_results(tracking_uri: str, folder: str) -> str | None:
    """A run's kept results (``folder``: its encoder, files, ``final_metrics.json`` and ``run.json``) into
    its MLflow run: files, final metrics, the registered encoder; ends the run. Returns the model URI."""
    with open(os.path.join(folder, "run.json")) as f:
        run = json.load(f)
    with open(os.path.join(folder, "final_metrics.json")) as f:
        final = json.load(f)
    run_id = run["run_id"]
    tracking.log_artifact(tracking_uri, run_id, os.path.join(folder, "encoder"), "encoder")
    for name in RESULT_FILES:
        tracking.log_artifact(tracking_uri, run_id, os.path.join(folder, name))
    tracking.log_metrics(
        tracking_uri, run_id, {k: v for k, v in final.items() if isinstance(v, (int, float))}
    )
    model_uri = None
    if run["register_as"]:
        model_uri = tracking.register_encoder(tracking_uri, run_id, run["register_as"], run["version_tags"])
    tracking.end_run(tracking_uri, run_id)
    return model_uri


def log_kept_results(results_uri: str, tracking_uri: str | None = None) -> dict:
    """Log the results a run kept in storage (``<storage>/train/<run>/result``) into its MLflow run, for a
    run whose tracking server was away when it ended (``ResultsNotLogged``). Returns run id and model URI."""
    tracking_uri = tracking.resolve_tracking_uri(tracking_uri)
    fs, path = storage.filesystem(storage.join(results_uri, "run.json"))
    if not fs.exists(path):
        raise FileNotFoundError(f"no kept run results at {results_uri} (it has no run.json)")
    run_id = json.loads(fs.cat_file(path))["run_id"]
    status = tracking.run_status(tracking_uri, run_id)
    if status == "FINISHED":  # logging twice would register the encoder twice
        raise ValueError(f"run {run_id} in {tracking_uri} is finished already: its results are logged")
    with tempfile.TemporaryDirectory() as d:
        src_fs, src = storage.filesystem(results_uri)
        src_fs.get(src.rstrip("/") + "/", d, recursive=True)
        model_uri = _log_results(tracking_uri, d)
    return {"run_id": run_id, "model_uri": model_uri, "tracking_uri": tracking_uri}


def prepare_records(config: TrainConfig, probe: bool | None = None):
    """The config's zoo as chunk records at its chunk size (cached under its storage): a ``PrepareSummary``.
    The networks are probed when ``probe`` says so (default: when the config's encoder reads probes); a
    weights-only encoder takes the zoo's probed records where they are complete already."""
    return prepare_chunk_records(
        config.zoo,
        config.chunk_size,
        cache_root=storage.join(config.storage, "chunk-records"),
        format=config.format,
        steps=config.steps,
        epoch=config.zoo_epoch,
        probe=config.reads_probes() if probe is None else probe,
    )


def big_network_warning(config: TrainConfig, largest: int) -> str | None:
    """What to tell a user whose zoo holds a network of ``largest`` parameters, batched by network count."""
    if config.chunk_budget or largest <= BIG_NETWORK_PARAMS:
        return None
    return (
        f"warning: the zoo holds networks of up to {largest / 1e6:.1f} M parameters and a step takes "
        f"{config.batch_size} networks whatever their size, which may not fit in memory: --chunk-budget 20000 "
        "bounds every step (a network above the budget trains alone)"
    )


def split_records(config: TrainConfig, records_uri: str, **task) -> tuple[dict[str, str], pa.Table]:
    """The config's split of the records (``{id: "train"|"val"|"test"}``; ``task`` overrides the config's
    task fields) and the index it was made from (id, family, dataset, run, num_params, the property).
    ValueError when a checkpoint lacks the property."""
    index = read_record_index(records_uri, ("id", "family", "dataset", "run", "num_params", config.property))
    values = index.column(config.property).to_numpy(zero_copy_only=False).astype(np.float64)
    ids = index.column("id").to_pylist()
    missing = [i for i, v in zip(ids, values, strict=True) if not np.isfinite(v)]
    if missing:
        raise ValueError(
            f"{len(missing)} checkpoint(s) lack property {config.property!r} (e.g. {missing[:3]}); "
            "choose another --property or a zoo that records it"
        )
    fields = {
        "task": config.task,
        "train_datasets": config.train_datasets,
        "test_datasets": config.test_datasets,
        "train_families": config.train_families,
        "test_families": config.test_families,
        "test_fraction": config.test_fraction,
        **task,
    }
    assignment = assign_splits(
        ids,
        index.column("family").to_pylist(),
        index.column("dataset").to_pylist(),
        seed=config.split_seed,
        runs=index.column("run").to_pylist(),
        **fields,
    )
    return assignment, index


@dataclass
class Fitted:
    """What a run learns from its training networks alone, before the encoder trains."""

    scaler: Any  # pipeline.train.TargetScaler of the property
    datasets: tuple[str, ...]  # what the dataset vectors are learnt for; any other dataset reads as unknown
    peers: PeerConsensus | None  # the training networks' consensus on the probes, with peer_agreement


def fit_on_training_networks(
    config: TrainConfig, records_uri: str, assignment: dict[str, str], index: pa.Table, log: Callable
) -> Fitted:
    """The target scaler, the training datasets and the peer consensus."""
    from pipeline.train import TargetScaler

    in_train = [assignment.get(i) == "train" for i in index.column("id").to_pylist()]
    values = index.column(config.property).to_numpy(zero_copy_only=False).astype(np.float64)[in_train]
    peers = None
    if config.peer_agreement:
        peers = fit_peer_consensus(records_uri, [i for i, s in assignment.items() if s == "train"])
        log(
            f"peer consensus: {len(peers.members)} training networks with class probabilities on the probes"
            f" ({', '.join(f'{k}: {n}' for k, n in sorted(peers.counts.items())) or 'none'})"
        )
    return Fitted(
        scaler=TargetScaler(float(values.mean()), float(values.std() or 1.0)),
        datasets=tuple(
            sorted({d for d, t in zip(index.column("dataset").to_pylist(), in_train, strict=True) if t})
        ),
        peers=peers,
    )


def start_run(
    config: TrainConfig,
    tracking_uri: str,
    prepared,
    assignment: dict[str, str],
    counts: dict[str, int],
    fitted: Fitted,
    parent_run_id: str | None,
    log: Callable,
) -> tuple[str, str]:
    """(run id, run name) of the run's MLflow run: resumed where the config names a run that exists, else a
    new one with the config as parameters and the zoo as its input."""
    run_name = config.run_name or _new_run_name(config, prepared.fingerprint)
    run_id = tracking.find_run(tracking_uri, config.experiment, run_name) if config.run_name else None
    if run_id is not None:
        log(f"resuming MLflow run {run_id} ({run_name})")
        return run_id, run_name
    params = {
        **to_dict(config),
        "run_name": run_name,
        "chunk_records": prepared.output,
        "n_probed": prepared.probed,
        "n_peer_reference": len(fitted.peers.members) if fitted.peers is not None else 0,
        **{f"n_{k}": v for k, v in counts.items()},
    }
    tags = {
        "zoo_fingerprint": prepared.fingerprint,
        "chunk_size": str(config.chunk_size),
        "split_fingerprint": split_fingerprint(assignment),
        "task": config.task,
        "property": config.property,
    }
    run_id = tracking.start_run(tracking_uri, config.experiment, run_name, params, tags, parent_run_id)
    zoo_profile = {"format": prepared.format, "checkpoints": prepared.records, "rejected": prepared.rejected}
    tracking.log_zoo_input(tracking_uri, run_id, config.zoo, prepared.fingerprint, zoo_profile)
    return run_id, run_name


def train_encoder(
    config: TrainConfig,
    records_uri: str,
    assignment: dict[str, str],
    fitted: Fitted,
    tracking_uri: str,
    run_id: str,
    run_name: str,
    callbacks: list,
):
    """Ray Train's fit of the encoder (DDP workers, resumable by run name): its Result, whose return value
    holds rank 0's best-validation encoder state. The training split streams from storage every epoch, in
    a fresh file order, so no split is held in memory and a run's memory does not grow with the zoo."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.train import train_fn_per_worker

    # Reproducible runs: with the order preserved, Ray Data hands each worker its rows by a fixed rule
    # (locality hints are ignored) instead of to whichever worker asks first, so the same seed gives the
    # same batches, and the same encoder. Without it three runs of the demo, one seed, gave tau 0.33-0.44.
    in_order = DataConfig.default_ingest_options()
    in_order.preserve_order = True
    train_fs, train_path = pyarrow_filesystem(storage.join(config.storage, "train"))
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={
            "config": to_dict(config),
            "target_mean": fitted.scaler.mean,
            "target_std": fitted.scaler.std,
            "train_records": sum(1 for s in assignment.values() if s == "train"),
            "datasets": fitted.datasets,
            "tracking_uri": tracking_uri,
            "run_id": run_id,
            # Each epoch's validation reads the record files directly (pipeline.split_reads), a share per
            # worker: streaming the whole zoo through Ray Data to keep a tenth of it cost 4-5x the CPU.
            "records_uri": records_uri,
            "val_ids": sorted(i for i, s in assignment.items() if s == "val"),
            "peers": fitted.peers,
        },
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker, **({"GPU": 1} if config.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=train_path,
            storage_filesystem=train_fs,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
        datasets={
            "train": split_datasets(records_uri, assignment, fitted.peers, config.seed, ("train",))["train"]
        },
        dataset_config=DataConfig(datasets_to_split=["train"], execution_options={"train": in_order}),
    )
    try:
        result = trainer.fit()
    except Exception:
        tracking.end_run(tracking_uri, run_id, "FAILED")
        raise
    if result.return_value is None:
        raise RuntimeError(f"training run {run_name} returned nothing from rank 0")
    return result


# A scoring task's claim: as small as a read task's, so a sweep's trials never wait on it.
SCORE_TASK_CPUS = 0.25
SCORED_COLUMNS = ("id", "family", "dataset", "prediction", "target")


def _score_files(records_uri: str, files: list[str], ids: pa.Array, peers, encoder, config, scaler) -> dict:
    """``predict_records`` of the records of ``ids`` in ``files``, read with pyarrow in this process."""
    from pipeline.train import predict_records

    return predict_records(encoder, split_batches(records_uri, files, ids, peers), config, scaler)


def score_records(
    encoder,
    records_uri: str,
    ids: list[str],
    config: TrainConfig,
    scaler,
    peers: PeerConsensus | None = None,
    tasks: int | None = None,
) -> dict[str, list]:
    """``predict_records`` of the chunk records of ``ids``, in file order, scored in parallel Ray tasks of a
    few record files each, at most ``tasks`` at once (default: one per CPU of the cluster); the caller
    gathers five numbers per network. Each task reads its files with pyarrow: through Ray Data the same
    pass cost 4-5x the CPU of reading the files directly (BENCHMARKS.md), and scoring on the driver used
    one process however large the cluster."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    tasks = tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    files = record_files(records_uri)
    # About four groups per task slot, so a slow group does not leave the other slots idle at the end.
    per_task = max(1, math.ceil(len(files) / (4 * tasks)))
    groups = [files[i : i + per_task] for i in range(0, len(files), per_task)]
    # Outside any placement group: a Tune trial's tasks otherwise join its group, whose CPUs the trial
    # itself holds, and would wait for ever.
    outside = PlacementGroupSchedulingStrategy(placement_group=None)
    score = ray.remote(num_cpus=SCORE_TASK_CPUS, max_retries=3, scheduling_strategy=outside)(_score_files)
    shared = [ray.put(v) for v in (pa.array(sorted(ids), pa.string()), peers, encoder, config, scaler)]
    pending, done = {}, {}
    for k, group in enumerate(groups):
        if len(pending) >= tasks:
            ready, _ = ray.wait(list(pending), num_returns=1)
            done[pending.pop(ready[0])] = ray.get(ready[0])
        pending[score.remote(records_uri, group, *shared)] = k
    for ref, k in pending.items():
        done[k] = ray.get(ref)
    return {c: [v for k in range(len(groups)) for v in done[k][c]] for c in SCORED_COLUMNS}


def evaluate(
    config: TrainConfig, encoder, records_uri: str, assignment: dict[str, str], fitted: Fitted, result
) -> tuple[dict, dict, list]:
    """(test predictions, final metrics, per-subset rows) of the best-validation encoder on the test split,
    scored once, with the same scores on its own training networks: one pass of parallel Ray tasks over
    the record files (score_records) scores both."""
    returned = result.return_value
    ids = [i for i, s in assignment.items() if s in ("test", "train")]
    scored = score_records(encoder, records_uri, ids, config, fitted.scaler, peers=fitted.peers)

    def split(name: str) -> dict[str, list]:
        keep = [assignment[i] == name for i in scored["id"]]
        return {c: [v for v, k in zip(values, keep, strict=True) if k] for c, values in scored.items()}

    test = split("test")
    pred, true = np.array(test["prediction"]), np.array(test["target"])
    overall = regression_metrics(pred, true)
    rows = subset_metrics(pred, true, test["family"], test["dataset"])
    final = {
        "test_kendall_tau": overall["kendall_tau"],
        "test_r2": overall["r2"],
        "test_mse": overall["mse"],
        "best_val_kendall_tau": returned["best_val_kendall_tau"],
        "best_epoch": returned["best_epoch"],  # 0-based, like the MLflow step of the per-epoch metrics
    }
    if result.metrics:  # the last epoch's training pass, slowest worker (research/benchmark_train.py)
        final["last_epoch_train_seconds"] = result.metrics.get("train_epoch_seconds")
        final["last_epoch_val_seconds"] = result.metrics.get("val_seconds")
    if config.invariance_weight > 0 and result.metrics:
        # How many training networks had no known function-preserving permutation (pipeline.invariance).
        final["train_networks_without_invariance"] = result.metrics.get(
            "train_networks_without_invariance", 0
        )
    for r in rows[1:]:
        # MLflow metric names allow no "=": test_kendall_tau/family/mlp
        final[f"test_kendall_tau/{r['subset'].replace('=', '/')}"] = r["kendall_tau"]
    # The same encoder scored on the networks it was fitted on: beside the test scores this tells
    # underfitting (both poor: more capacity or steps may help) from overfitting (train far ahead: more
    # networks or regularisation may). On the inr zoo SNE stays far from fitting its own networks (docs/results.md).
    fitted_networks = split("train")
    fit = regression_metrics(np.array(fitted_networks["prediction"]), np.array(fitted_networks["target"]))
    final.update({f"train_{k}": fit[k] for k in ("kendall_tau", "r2", "mse")})
    return test, final, rows


def statnn_baseline(
    config: TrainConfig, records_uri: str, assignment: dict[str, str], test: dict, final: dict
) -> np.ndarray | None:
    """STATNN's predictions of the test networks, in ``test``'s order, its scores added to ``final``; None
    where the config runs no baseline."""
    if not config.statnn:
        return None
    by_id = run_statnn(records_uri, assignment, config.property, config.seed)
    predictions = np.array([by_id[i] for i in test["id"]])
    s = regression_metrics(predictions, np.array(test["target"]))
    final.update({f"statnn_test_{k}": s[k] for k in ("kendall_tau", "r2", "mse")})
    return predictions


def export_results(
    config: TrainConfig,
    *,
    run_id: str,
    run_name: str,
    tracking_uri: str,
    fingerprint: str,
    encoder_state: dict,
    fitted: Fitted,
    assignment: dict[str, str],
    test: dict,
    statnn_pred: np.ndarray | None,
    final: dict,
    rows: list,
) -> tuple[str, str | None]:
    """Write the run's encoder and result files to storage (``<storage>/train/<run>/result``), then into its
    MLflow run. Returns (the kept folder's URI, the registered model's URI)."""
    import pandas as pd

    from pipeline.export import save_encoder
    from pipeline.train import encoder_config

    pred, true = np.array(test["prediction"]), np.array(test["target"])
    kept = storage.join(config.storage, "train", run_name, "result")
    with tempfile.TemporaryDirectory() as d:
        meta = {
            # Every encoder setting, so predict rebuilds exactly this architecture.
            "encoder": asdict(encoder_config(config, fitted.datasets)),
            "chunk_size": config.chunk_size,
            "normalize": config.normalize,
            "property": config.property,
            "loss": config.loss,
            "target_mean": fitted.scaler.mean,
            "target_std": fitted.scaler.std,
            "run_name": run_name,
            "zoo_fingerprint": fingerprint,
        }
        training_ids = {part: [i for i, v in assignment.items() if v == part] for part in ("train", "val")}
        save_encoder(os.path.join(d, "encoder"), encoder_state, meta, training_ids, fitted.peers)
        tracking.write_model_spec(os.path.join(d, "encoder"), run_id)
        title = f"SNE test: tau={final['test_kendall_tau']:.3f} ({config.task})"
        scatter_plot(pred, true, test["family"], os.path.join(d, "test_scatter.png"), title)
        with open(os.path.join(d, "test_metrics.txt"), "w") as f:
            f.write(format_table(rows) + "\n")
        with open(os.path.join(d, "test_metrics.json"), "w") as f:
            json.dump(rows, f, indent=2)
        with open(os.path.join(d, "final_metrics.json"), "w") as f:
            json.dump(final, f, indent=2)
        predictions = {k: test[k] for k in ("id", "family", "dataset")} | {"target": true, "prediction": pred}
        if statnn_pred is not None:
            predictions["statnn_prediction"] = statnn_pred
        pd.DataFrame(predictions).to_csv(
            os.path.join(d, "test_predictions.csv"), index=False, float_format="%.6f"
        )
        version_tags = {"preset": config.preset, "property": config.property, "task": config.task}
        version_tags.update(
            {k: f"{final[k]:.4f}" for k in ("test_kendall_tau", "test_r2", "best_val_kendall_tau")}
        )
        with open(os.path.join(d, "run.json"), "w") as f:
            json.dump({"run_id": run_id, "register_as": config.register_as, "version_tags": version_tags}, f)
        # The results live in storage beside the run's checkpoints before MLflow is asked to take them, so a
        # tracking server lost at the end of a long run costs no result: jobs/log_results.py logs them later.
        storage.put_folder(d, kept)
        try:
            model_uri = _log_results(tracking_uri, d)
        except Exception as e:
            raise ResultsNotLogged(
                f"MLflow at {tracking_uri} did not take the results of run {run_id} ({str(e).splitlines()[0]}); "
                f"they are kept at {kept}. Once the server answers, `python jobs/log_results.py {kept}` logs them "
                f"into the run; meanwhile the encoder there works with jobs/predict.py --encoder {kept}/encoder"
            ) from e
    return kept, model_uri


def run_training(
    config: TrainConfig | dict,
    *,
    parent_run_id: str | None = None,
    train_callbacks: list | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train SNE end to end on the config's zoo and task, stage by stage (see the module docstring)."""
    import torch

    from pipeline.train import build_encoder

    config = config if isinstance(config, TrainConfig) else from_dict(config)
    config.validate()
    started = time.time()
    tracking_uri = tracking.resolve_tracking_uri(config.tracking_uri)

    prepared = prepare_records(config)
    log(
        f"chunk records: {prepared.records} ({prepared.rejected} rejected; {prepared.probed} with a probe"
        f" of what the network computes) at {prepared.output}"
        + (" [cached]" if prepared.reused else f" [{prepared.seconds:.0f} s]")
    )

    # Prepare showed its bar; the reads from here on (the split, the fits, every epoch's splits) would bury
    # the results under bars of their own.
    quiet_data_progress()
    assignment, index = split_records(config, prepared.output)
    counts = {s: sum(1 for v in assignment.values() if v == s) for s in ("train", "val", "test")}
    log(f"split ({config.task}): {counts}")
    warning = big_network_warning(config, int(pc.max(index.column("num_params")).as_py()))
    if warning:
        log(warning)

    fitted = fit_on_training_networks(config, prepared.output, assignment, index, log)
    run_id, run_name = start_run(
        config, tracking_uri, prepared, assignment, counts, fitted, parent_run_id, log
    )

    callbacks = [*(train_callbacks or []), *([epoch_progress(config.epochs)] if progress else [])]
    result = train_encoder(
        config, prepared.output, assignment, fitted, tracking_uri, run_id, run_name, callbacks
    )
    encoder_state = result.return_value["encoder_state"]

    encoder = build_encoder(config, fitted.datasets)
    encoder.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in encoder_state.items()})
    test, final, rows = evaluate(config, encoder, prepared.output, assignment, fitted, result)
    statnn_pred = statnn_baseline(config, prepared.output, assignment, test, final)

    checkpoint_uri = None
    if result.checkpoint is not None:
        train_path = pyarrow_filesystem(storage.join(config.storage, "train"))[1]
        checkpoint_uri = storage.join(
            config.storage, "train", os.path.relpath(result.checkpoint.path, train_path)
        )
    kept, model_uri = export_results(
        config,
        run_id=run_id,
        run_name=run_name,
        tracking_uri=tracking_uri,
        fingerprint=prepared.fingerprint,
        encoder_state=encoder_state,
        fitted=fitted,
        assignment=assignment,
        test=test,
        statnn_pred=statnn_pred,
        final=final,
        rows=rows,
    )
    final.update(
        {
            "run_id": run_id,
            "run_name": run_name,
            "tracking_uri": tracking_uri,
            "experiment": config.experiment,
            "encoder_uri": f"runs:/{run_id}/encoder",
            "model_uri": model_uri,
            "checkpoint_uri": checkpoint_uri,
            "results_uri": kept,
            "chunk_records": prepared.output,
            "split": counts,
            "per_subset": rows,
            "seconds": round(time.time() - started, 1),
        }
    )
    return final
