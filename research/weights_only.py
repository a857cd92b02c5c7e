"""Does SNE learn from weights alone? A single-process lab run of the training loop, no Ray, no MLflow.

Reads a zoo's final checkpoints, chunks them without probes, makes the random task's split (the same
assignment jobs/train.py makes), trains the encoder with pipeline.train's own train step for the given
config, selects the epoch on validation τ, scores the test split once, and fits STATNN on the same training
networks.
Prints one JSON line per run, so several seeds and settings can be compared side by side.

    python research/weights_only.py --zoo data/cnnzoo-digits --preset paper --seeds 0,1,2
    python research/weights_only.py --zoo data/cnnzoo-digits --preset paper --set normalize=none --epochs 10

``--set key=value`` overrides any TrainConfig field; ``--overfit N`` instead trains on the first N training
networks and reports the fit on those same networks (the "can it learn at all" diagnostic).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from pipeline.baselines import baseline_row, fit_baseline
from pipeline.chunking import chunk_checkpoint
from pipeline.config import PRESETS, from_dict, parse_settings
from pipeline.evaluation import regression_metrics
from pipeline.splits import assign_splits
from pipeline.train import TargetScaler, build_encoder, predict_records, train_in_process
from pipeline.zoo import Rejection
from pipeline.zoo.listing import read_zoo


def load_records(zoo: str, chunk_size: int) -> list[dict]:
    records = []
    for item in read_zoo(zoo):
        if isinstance(item, Rejection):
            raise SystemExit(f"{zoo}: {item.id} rejected: {item.reason}")
        records.append(chunk_checkpoint(item, chunk_size))
    return records


def fit(records: dict[str, list[dict]], config, log_every: int = 0) -> dict:
    """Train on records["train"], select on records["val"], score records["test"] once (if it is given)."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(2)
    target = np.array([r[config.property] for r in records["train"]], dtype=np.float64)
    scaler = TargetScaler(float(target.mean()), float(target.std()) or 1.0)
    encoder = build_encoder(config)
    rng = np.random.default_rng(config.seed)
    best = (-math.inf, -1, None)
    history = []
    started = time.perf_counter()
    epochs = train_in_process(encoder, records["train"], config, scaler, rng)
    for epoch, losses in enumerate(epochs):
        val = predict_records(encoder, _batches(records["val"]), config, scaler)
        metrics = regression_metrics(np.array(val["prediction"]), np.array(val["target"]))
        history.append(
            {
                "epoch": epoch,
                "task_loss": float(np.mean([m["task_loss"] for m in losses])),
                "invariance_loss": float(np.mean([m["invariance_loss"] for m in losses])),
                "val_tau": round(metrics["kendall_tau"], 4),
                "val_r2": round(metrics["r2"], 4),
            }
        )
        if log_every and (epoch + 1) % log_every == 0:
            print(json.dumps(history[-1]), flush=True)
        tau = metrics["kendall_tau"] if metrics["kendall_tau"] == metrics["kendall_tau"] else -math.inf
        if tau > best[0] or best[2] is None:
            best = (tau, epoch, {k: v.clone() for k, v in encoder.state_dict().items()})
    out = {"best_epoch": best[1], "best_val_tau": round(best[0], 4), "history": history}
    out["seconds"] = round(time.perf_counter() - started, 1)
    if records.get("test"):
        encoder.load_state_dict(best[2])
        test = predict_records(encoder, _batches(records["test"]), config, scaler)
        test_metrics = regression_metrics(np.array(test["prediction"]), np.array(test["target"]))
        out |= {"test_tau": round(test_metrics["kendall_tau"], 4), "test_r2": round(test_metrics["r2"], 4)}
    return out


def rank_gauss(split: dict[str, list[dict]], prop: str) -> None:
    """Replace ``prop`` in every record by the normal quantile of its rank among the training networks."""
    from scipy.stats import norm

    train = np.sort([r[prop] for r in split["train"]])
    for records in split.values():
        for r in records:
            # Mid-rank among the training values, kept inside (0, 1).
            low, high = np.searchsorted(train, r[prop], "left"), np.searchsorted(train, r[prop], "right")
            r[prop] = float(norm.ppf((0.5 * (low + high) + 0.5) / (len(train) + 1)))


def _batches(records: list[dict], size: int = 64):
    for s in range(0, len(records), size):
        yield records[s : s + size]


def statnn(records: dict[str, list[dict]], prop: str, seed: int) -> float:
    rows = {str(r["id"]): baseline_row(r, prop) for v in records.values() for r in v}
    assignment = {str(r["id"]): split for split, v in records.items() for r in v}
    pred, _ = fit_baseline("statnn", rows, assignment, seed)
    y = np.array([rows[i]["target"] for i in pred])
    return round(regression_metrics(np.array(list(pred.values())), y)["kendall_tau"], 4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", required=True)
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--set", action="append", default=[], help="key=value override of a TrainConfig field")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seeds", default="0")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--overfit", type=int, help="train and score on the first N training networks")
    p.add_argument("--log-every", type=int, default=0)
    p.add_argument("--no-statnn", action="store_true")
    p.add_argument(
        "--rank-target",
        action="store_true",
        help="train on the property mapped through the training networks' empirical CDF to normal quantiles "
        "(monotone: τ is unchanged, R² and MSE are then on that scale)",
    )
    p.add_argument(
        "--validation-only", action="store_true", help="choose settings: train and validate, never touch test"
    )
    args = p.parse_args()

    overrides = parse_settings(args.set)
    if args.epochs:
        overrides["epochs"] = args.epochs
    config = from_dict(overrides, PRESETS[args.preset]())
    records = load_records(args.zoo, config.chunk_size)
    assignment = assign_splits(
        [r["id"] for r in records],
        [r["family"] for r in records],
        [r["dataset"] for r in records],
        seed=args.split_seed,
        runs=[r["run"] for r in records],
    )
    split = {s: [r for r in records if assignment[r["id"]] == s] for s in ("train", "val", "test")}
    if args.rank_target:
        rank_gauss(split, config.property)
    if args.overfit:
        few = split["train"][: args.overfit]
        split = {"train": few, "val": few, "test": few}
    if args.validation_only:
        split["test"] = []
    baseline = (
        None if args.no_statnn or args.overfit or args.validation_only else statnn(split, config.property, 0)
    )
    for seed in (int(s) for s in args.seeds.split(",")):
        run = fit(split, from_dict({"seed": seed}, config), args.log_every)
        history = run.pop("history")
        summary = {"seed": seed, "preset": args.preset, "set": overrides, **run, "statnn_tau": baseline}
        summary["last_val_tau"] = history[-1]["val_tau"]
        summary["invariance_loss_last"] = history[-1]["invariance_loss"]
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
