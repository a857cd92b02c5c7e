"""Training SNE: the train step (pure torch) and the Ray Train per-worker loop.

The per-worker loop streams its shard of the training chunk records, scores its share of the validation
records and gathers the other workers' scores, logs per-epoch metrics to MLflow from rank 0, reports a
checkpoint every epoch (so a restarted worker group or a rerun with the same run name resumes), and
returns the best-validation encoder's state from rank 0 (``Result.return_value``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from pipeline.collate import collate_chunk_records, records_from_batch
from pipeline.config import TrainConfig, from_dict
from pipeline.encoder import EncoderConfig, build_set_encoder
from pipeline.evaluation import regression_metrics
from pipeline.invariance import logit_invariance_loss, permute_record
from pipeline.runtime import bound_allocator_memory
from pipeline.side_inputs import INPUT_WIDTHS, network_inputs

CHECKPOINT_FILE = "state.pt"


@dataclass
class TargetScaler:
    """Standardises the property for MSE (train mean/std); BCE trains on the raw [0, 1] value."""

    mean: float = 0.0
    std: float = 1.0

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std + self.mean


# The encoder's settings a run chooses (TrainConfig holds their defaults and help; EncoderConfig leaves them
# without one).
RUN_ENCODER_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(EncoderConfig)
    if f.name in {g.name for g in dataclasses.fields(TrainConfig)}
)


def encoder_config(config: TrainConfig, datasets: tuple[str, ...] = ()) -> EncoderConfig:
    """The encoder a run trains: every EncoderConfig field the run config also has, taken from it, and the
    network inputs its switches turn on; ``datasets``: its training networks' datasets (read with
    dataset_vectors)."""
    return EncoderConfig(
        **{name: getattr(config, name) for name in RUN_ENCODER_FIELDS},
        network_inputs=network_inputs(config),
        datasets=tuple(sorted(set(datasets))) if config.dataset_vectors else (),
        input_widths=INPUT_WIDTHS,
    )


def build_encoder(config: TrainConfig, datasets: tuple[str, ...] = ()) -> torch.nn.Module:
    torch.manual_seed(config.seed)
    return build_set_encoder(encoder_config(config, datasets))


def collate(records: list[dict], config: TrainConfig, device: torch.device | None = None) -> dict:
    """A packed batch of chunk records as this run's encoder reads it, its tensors on ``device`` (the
    encoder's: ``device_of``) where one is given."""
    batch = collate_chunk_records(
        records, config.property, config.normalize, layer_summaries=config.layer_statistics
    )
    if device is None or device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def device_of(encoder: torch.nn.Module) -> torch.device:
    return next(encoder.parameters()).device


def predict_property(encoder: torch.nn.Module, batch: dict, loss: str, scaler: TargetScaler) -> torch.Tensor:
    """(B,) property predictions on the property's own scale."""
    out = encoder(batch)
    return torch.sigmoid(out) if loss == "bce" else scaler.decode(out)


def task_loss(raw: torch.Tensor, target: torch.Tensor, loss: str, scaler: TargetScaler) -> torch.Tensor:
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(raw, target.clamp(0.0, 1.0))
    return F.mse_loss(raw, scaler.encode(target))


def hide_dataset_context(
    batch: dict, b: int, copied: list[int], share: float, rng: np.random.Generator
) -> None:
    """Read a random ``share`` of the batch's first ``b`` networks, and their permuted copies alike (logit
    invariance compares like with like; network ``copied[j]``'s copy is row ``b + j``), as networks of an
    unknown dataset: no dataset vector, no peer agreement.

    Networks of a dataset no training network had reach the encoder so; trained with the peer agreement
    on every network, the encoder had learnt its offsets with it and misjudged their level (docs/results.md).
    """
    keep = torch.from_numpy(rng.random(b) >= share)
    keep = torch.cat((keep, keep[copied]))
    for key in ("peer_present", "dataset_present"):
        batch[key] = batch[key] * keep.to(device=batch[key].device, dtype=batch[key].dtype)


def train_step(
    encoder: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    records: list[dict],
    config: TrainConfig,
    scaler: TargetScaler,
    rng: np.random.Generator,
    loss_weight: float = 1.0,
) -> dict[str, float]:
    """One optimisation step: task loss + λ · logit-invariance loss on a permuted copy of the batch.

    The original and the permuted checkpoints go through the encoder in one forward pass, so DDP
    sees a single forward per backward. ``loss_weight`` 0 makes a step that adds nothing to the averaged
    gradient: a worker whose shard ran out takes such steps while the others finish theirs (DDP needs
    every worker in every step), and applies the same averaged update, so the workers stay identical.
    """
    b = len(records)
    lam = config.invariance_weight
    # Networks whose function-preserving permutation is unknown (pipeline.invariance.unit_groups) take
    # the task loss alone; ``copied`` indexes the networks that have a permuted copy after the batch.
    copies = [permute_record(r, rng) for r in records] if lam > 0 else []
    copied = [i for i, copy in enumerate(copies) if copy is not None]
    batch = collate(records + [copies[i] for i in copied], config, device_of(encoder))
    if config.context_dropout > 0 and (config.peer_agreement or config.dataset_vectors):
        hide_dataset_context(batch, b, copied, config.context_dropout, rng)
    raw = encoder(batch)
    loss_task = task_loss(raw[:b], batch["target"][:b], config.loss, scaler)
    loss_inv = logit_invariance_loss(raw[copied], raw[b:]) if copied else torch.zeros(())
    loss = loss_weight * (loss_task + lam * loss_inv)
    if not torch.isfinite(loss):
        # Stop here: one non-finite step would silently turn every weight into NaN.
        raise FloatingPointError(
            f"non-finite training loss ({loss.item()}) on a batch of {b} checkpoints "
            f"(first ids {batch['ids'][:3]}, predictions finite: {bool(torch.isfinite(raw).all())})"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), config.grad_clip)
    optimizer.step()
    return {
        "loss": loss.item(),
        "task_loss": loss_task.item(),
        "invariance_loss": loss_inv.item(),
        "without_permutation": float(len(copies) - len(copied)),
        "networks": float(b),
    }


def record_chunks(record: dict) -> int:
    """Weight and bias chunks a chunk record feeds the encoder."""
    size = int(record["chunk_size"])
    return sum(len(m) for m in (*record["weight_mask"], *record["bias_mask"])) // size


def budget_batches(records: Iterable[dict], budget: int, max_networks: int) -> Iterator[list[dict]]:
    """Consecutive records grouped into batches of at most ``budget`` chunks and ``max_networks`` networks;
    a network of more chunks than the budget forms a batch of its own (the encoder micro-batches its
    chunks, so it still fits). Every record lands in exactly one batch, in order."""
    batch: list[dict] = []
    used = 0
    for record in records:
        chunks = record_chunks(record)
        if batch and (used + chunks > budget or len(batch) >= max_networks):
            yield batch
            batch, used = [], 0
        batch.append(record)
        used += chunks
    if batch:
        yield batch


def epoch_batches(raw_batches: Iterable, config: TrainConfig) -> Iterator[list[dict]]:
    """An epoch's training batches as record lists: Ray Data's batches as they come, or regrouped by
    ``config.chunk_budget``."""
    batches = (records_from_batch(raw) for raw in raw_batches)
    if config.chunk_budget <= 0:
        return batches
    records = (record for batch in batches for record in batch)
    return budget_batches(records, config.chunk_budget, config.batch_size)


# Records the per-epoch local shuffle holds at once: the whole shard of a laptop-sized zoo; on a larger one
# it mixes within this window of a stream whose files are already read in a fresh order each epoch.
SHUFFLE_BUFFER_RECORDS = 1024


def shard_epoch(shard, config: TrainConfig, epoch: int, rank: int) -> Iterator[list[dict]]:
    """One epoch of a worker's training shard (a Ray DataIterator, or a Dataset) as record batches: a fresh
    order every epoch, the same for the same seed, epoch and rank, streamed through a bounded buffer."""
    raw = shard.iter_batches(
        batch_size=config.batch_size,
        batch_format="numpy",
        local_shuffle_buffer_size=SHUFFLE_BUFFER_RECORDS,
        local_shuffle_seed=config.seed * 100_003 + epoch * 101 + rank,
    )
    return epoch_batches(raw, config)


# Training records kept each epoch to re-estimate the embedding norm's statistics before evaluation, capped
# by count and by parameters held (a batch of 10M-parameter networks is already large on its own).
CALIBRATION_RECORDS = 256
CALIBRATION_PARAMS = 50_000_000


def keep_for_calibration(kept: list[list[dict]], records: list[dict]) -> None:
    """Append a training batch to ``kept`` while within CALIBRATION_RECORDS and CALIBRATION_PARAMS (the
    first batch always, whatever its size: it is in memory already)."""
    count = sum(len(batch) for batch in kept) + len(records)
    params = sum(int(r["num_params"]) for batch in (*kept, records) for r in batch)
    if not kept or (count - len(records) < CALIBRATION_RECORDS and params <= CALIBRATION_PARAMS):
        kept.append(records)


@torch.no_grad()
def recalibrate_embedding_norm(
    encoder: torch.nn.Module, record_batches: list[list[dict]], config: TrainConfig
) -> None:
    """Re-estimate the batch-standardised embedding's running mean and variance with the current weights.

    Training standardises each batch by its own statistics, evaluation by running averages collected
    while the weights moved. Where networks' embeddings are nearly alike (INRs) the lagging averages
    shift every embedding far more than networks differ, and evaluation loses the ranking (measured on
    our first inr zoo, SIREN first-layer init: validation R² between -28 and -0.4 and τ near 0, against
    a steady 0.15-0.19 and 0.28-0.30 after this). So before each evaluation the averages are recomputed
    over some of the epoch's training batches, equally weighted ("precise BatchNorm"), those of every
    Ray Train worker, so all workers evaluate the same encoder. A no-op without an embedding norm.
    """
    module = _unwrap(encoder)
    norm = getattr(module, "embedding_norm", None)
    if not isinstance(norm, torch.nn.BatchNorm1d):
        return
    batches = [records for records in record_batches if len(records) >= 2]
    if batches:
        momentum, was_training = norm.momentum, module.training
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
        module.train()
        try:
            for records in batches:
                module(collate(records, config, device_of(module)))
        finally:
            norm.momentum = momentum
            module.train(was_training)
    _pool_norm_statistics(norm, len(batches))


def _pool_norm_statistics(norm: torch.nn.BatchNorm1d, batches: int) -> None:
    """Every worker's running statistics replaced by the average over all workers' calibration batches: each
    worker's are an equally weighted average over its own ``batches``, so the pooled ones are the batch-count
    weighted mean, what one worker calibrating on every batch would hold. Without it each worker kept the
    statistics of its own shard. A no-op in one process; every worker must call it (a collective)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    mean, var = norm.running_mean, norm.running_var
    weight = float(batches)
    pooled = torch.cat(
        [
            mean.double() * weight,
            var.double() * weight,
            torch.tensor([weight], dtype=torch.float64, device=mean.device),
        ]
    )
    torch.distributed.all_reduce(pooled)
    total = float(pooled[-1])
    if total == 0:
        return
    width = mean.numel()
    mean.copy_((pooled[:width] / total).to(mean.dtype))
    var.copy_((pooled[width : 2 * width] / total).to(var.dtype))
    norm.num_batches_tracked.fill_(int(total))


@torch.no_grad()
def predict_records(
    encoder: torch.nn.Module, batches, config: TrainConfig, scaler: TargetScaler
) -> dict[str, list]:
    """Predictions for every record in ``batches`` (an iterable of Ray numpy batches or record lists)."""
    encoder.eval()
    out: dict[str, list] = {"id": [], "family": [], "dataset": [], "prediction": [], "target": []}
    for raw_batch in batches:
        records = records_from_batch(raw_batch)
        batch = collate(records, config, device_of(encoder))
        pred = predict_property(encoder, batch, config.loss, scaler)
        out["id"] += list(batch["ids"])
        out["family"] += list(batch["families"])
        out["dataset"] += list(batch["datasets"])
        out["prediction"] += pred.tolist()
        out["target"] += batch["target"].tolist()
    encoder.train()
    return out


def lr_factor(step: int, total_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` of ``total_steps``."""
    if schedule == "constant":
        return 1.0
    warmup = max(1, total_steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train_in_process(
    encoder: torch.nn.Module,
    records: list[dict],
    config: TrainConfig,
    scaler: TargetScaler,
    rng: np.random.Generator,
) -> Iterator[list[dict]]:
    """Train ``encoder`` on ``records`` in this process, as one Ray Train worker would (Adam, the learning-rate
    schedule, a fresh order each epoch, train_step); yields each epoch's task-loss values once the embedding
    norm is recalibrated, so the caller evaluates between epochs. For lab scripts and benchmarks."""
    if config.chunk_budget > 0:
        bound_allocator_memory()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = {"total_steps": config.epochs * math.ceil(len(records) / config.batch_size)}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, schedule["total_steps"], config.lr_schedule)
    )
    for epoch in range(config.epochs):
        order, calibration, losses = rng.permutation(len(records)), [], []
        by_count = [order[s : s + config.batch_size] for s in range(0, len(order), config.batch_size)]
        batches = list(epoch_batches([[records[i] for i in part] for part in by_count], config))
        if epoch == 0:
            schedule["total_steps"] = config.epochs * len(batches)
        for batch in batches:
            losses.append(train_step(encoder, optimizer, batch, config, scaler, rng))
            scheduler.step()
            keep_for_calibration(calibration, batch)
        recalibrate_embedding_norm(encoder, calibration, config)
        yield losses


def _over_workers(value: float, op: str = "sum") -> float:
    """``value`` reduced ("sum" or "max") over every Ray Train worker, each holding its shard's; itself on
    one worker."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    total = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(total, op=getattr(torch.distributed.ReduceOp, op.upper()))
    return float(total.item())


def _unwrap(encoder: torch.nn.Module) -> torch.nn.Module:
    return encoder.module if hasattr(encoder, "module") else encoder


def quiet_report_logs() -> None:
    """Drop the two INFO lines Ray Train's workers log at every report (the whole metrics dict, and where
    the checkpoint went): the controller's one line per epoch says it. Ray Train's other messages, a
    failure and its retry among them, still show."""
    import ray.train.v2._internal.execution.context as report_context

    logging.getLogger(report_context.__file__).setLevel(logging.WARNING)  # that module's logger is named so
    logging.getLogger("ray.train.v2._internal.execution.storage").setLevel(logging.WARNING)


def validation_predictions(
    encoder: torch.nn.Module, files: list[str], loop_config: dict, config: TrainConfig, scaler: TargetScaler
) -> dict[str, list]:
    """``predict_records`` of the whole validation split: this worker scores the validation records in its
    share of the record ``files`` (every world-size-th file from its rank), read directly from storage,
    and gathers the other workers' predictions and targets, so every worker computes the same metrics."""
    import ray.train

    from pipeline.split_reads import split_batches

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    ids = pa.array(loop_config["val_ids"], pa.string())
    # The bare module: DDP's forward may sync buffers with the other workers, which score other files.
    batches = split_batches(loop_config["records_uri"], files[rank::world], ids, loop_config["peers"])
    scored = predict_records(_unwrap(encoder), batches, config, scaler)
    mine = {k: scored[k] for k in ("prediction", "target")}
    if world == 1:
        return mine
    shares: list = [None] * world
    torch.distributed.all_gather_object(shares, mine)
    return {k: [v for share in shares for v in share[k]] for k in ("prediction", "target")}


def train_fn_per_worker(loop_config: dict) -> dict | None:
    """Ray Train loop. ``loop_config``: {"config": TrainConfig dict, "target_mean", "target_std",
    "train_records", "datasets" (the training networks'), "tracking_uri", "run_id", "records_uri",
    "val_ids", "peers" (a PeerConsensus or None)}. Returns (rank 0) the best encoder's state."""
    import ray.train
    import ray.train.torch

    from pipeline import tracking
    from pipeline.data import quiet_data_progress, record_files

    quiet_data_progress()
    quiet_report_logs()
    config = from_dict(loop_config["config"])
    if config.chunk_budget > 0:  # memory-bounded steps: freed tensors go back to the system (1.5-2x the time)
        bound_allocator_memory()
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(config.cpus_per_worker)))
    scaler = TargetScaler(loop_config["target_mean"], loop_config["target_std"])
    encoder = build_encoder(config, tuple(loop_config.get("datasets", ())))
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # Every worker takes the same number of steps per epoch (DDP), set by the largest shard. With a chunk
    # budget the count is known after the first epoch; until then it is estimated by networks.
    shard = math.ceil(loop_config["train_records"] / max(1, ctx.get_world_size()))
    schedule = {"total_steps": config.epochs * math.ceil(shard / config.batch_size)}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, schedule["total_steps"], config.lr_schedule)
    )

    start_epoch, best_tau, best_epoch, best_state = 0, -float("inf"), -1, None
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), weights_only=True)
        encoder.load_state_dict(state["encoder"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_tau, best_epoch = state["epoch"] + 1, state["best_val_tau"], state["best_epoch"]
        best_state = state["best_encoder"]
        schedule["total_steps"] = state.get("schedule_total_steps", schedule["total_steps"])
    encoder = ray.train.torch.prepare_model(encoder)

    train_shard = ray.train.get_dataset_shard("train")
    record_files_listed = record_files(loop_config["records_uri"])
    rng = np.random.default_rng(config.seed * 1000 + rank)
    tracking_up = True
    for epoch in range(start_epoch, config.epochs):
        losses = []
        calibration: list[list[dict]] = []
        steps, largest_shared, largest_network, trained_chunks = 0, 0, 0, 0
        epoch_started = time.perf_counter()
        stream, last = shard_epoch(train_shard, config, epoch, rank), None
        lockstep = config.chunk_budget > 0 and ctx.get_world_size() > 1
        while True:
            records = next(stream, None)
            if lockstep and _over_workers(float(records is not None), "max") == 0.0:
                break  # every shard is done
            if records is None and not lockstep:
                break
            if records is None:  # this shard is done, others are not: a step that adds nothing
                train_step(encoder, optimizer, last, config, scaler, rng, loss_weight=0.0)
            else:
                losses.append(train_step(encoder, optimizer, records, config, scaler, rng))
                chunks = [record_chunks(r) for r in records]
                largest_network = max(largest_network, *chunks)
                trained_chunks += sum(chunks)
                if len(chunks) > 1:
                    largest_shared = max(largest_shared, sum(chunks))
                keep_for_calibration(calibration, records)
                last = records
            scheduler.step()
            steps += 1
        if epoch == start_epoch and config.chunk_budget > 0:
            schedule["total_steps"] = max(
                1, (config.epochs - start_epoch) * steps + scheduler.last_epoch - steps
            )
        recalibrate_embedding_norm(encoder, calibration, config)
        train_seconds = time.perf_counter() - epoch_started
        val_started = time.perf_counter()
        val = validation_predictions(encoder, record_files_listed, loop_config, config, scaler)
        val_seconds = time.perf_counter() - val_started
        val_metrics = regression_metrics(np.array(val["prediction"]), np.array(val["target"]))
        tau = val_metrics["kendall_tau"]
        tau_for_selection = tau if tau == tau else -float("inf")
        if tau_for_selection > best_tau or best_state is None:
            best_tau, best_epoch = tau_for_selection, epoch
            best_state = {k: v.detach().clone() for k, v in _unwrap(encoder).state_dict().items()}
        metrics = {
            "epoch": epoch,
            "train_loss": float(np.mean([m["loss"] for m in losses])) if losses else float("nan"),
            "train_task_loss": float(np.mean([m["task_loss"] for m in losses])) if losses else float("nan"),
            "train_invariance_loss": float(np.mean([m["invariance_loss"] for m in losses]))
            if losses
            else float("nan"),
            # Networks trained this epoch, the largest step of several networks and the largest network,
            # in chunks, over all workers: with a chunk budget the first stays within it.
            "train_networks": _over_workers(sum(m["networks"] for m in losses)),
            "train_largest_shared_step_chunks": _over_workers(float(largest_shared), "max"),
            "train_largest_network_chunks": _over_workers(float(largest_network), "max"),
            # The most and the fewest chunks one worker trained this epoch: the workers step in lockstep,
            # so an epoch lasts as long as the busiest one takes, and shards are equal in networks, not in
            # chunks (a zoo of mixed sizes can load one worker with most of the work).
            "train_worker_chunks_max": _over_workers(float(trained_chunks), "max"),
            "train_worker_chunks_min": -_over_workers(-float(trained_chunks), "max"),
            # Networks of this epoch that took the task loss alone (no known permutation), all workers.
            "train_networks_without_invariance": _over_workers(sum(m["without_permutation"] for m in losses)),
            # The epoch's training pass (streaming its shard, the steps, recalibration), slowest worker.
            "train_epoch_seconds": _over_workers(train_seconds, "max"),
            # The epoch's validation pass (this worker's share of the record files, then the gather).
            "val_seconds": _over_workers(val_seconds, "max"),
            "val_kendall_tau": tau,
            "val_r2": val_metrics["r2"],
            "val_mse": val_metrics["mse"],
            "best_val_kendall_tau": best_tau,
        }
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save(
                    {
                        "encoder": _unwrap(encoder).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "best_val_tau": best_tau,
                        "best_epoch": best_epoch,
                        "best_encoder": best_state,
                        "schedule_total_steps": schedule["total_steps"],
                    },
                    os.path.join(d, CHECKPOINT_FILE),
                )
                checkpoint = ray.train.Checkpoint.from_directory(d)
                if loop_config.get("run_id") and tracking_up:
                    try:
                        tracking.log_metrics(
                            loop_config["tracking_uri"], loop_config["run_id"], metrics, step=epoch
                        )
                    except Exception as e:  # the tracking server went away: training goes on
                        tracking_up = False
                        print(
                            f"MLflow did not take epoch {epoch + 1}'s metrics ({str(e).splitlines()[0]}); "
                            "training goes on without per-epoch metrics in MLflow (Ray Train keeps them)",
                            flush=True,
                        )
            ray.train.report(metrics, checkpoint=checkpoint)

    if rank != 0:
        return None
    final = _unwrap(encoder)
    final.load_state_dict(best_state)
    return {
        "best_epoch": best_epoch,
        "best_val_kendall_tau": best_tau,
        "encoder_state": {k: v.cpu().numpy() for k, v in best_state.items()},
    }
