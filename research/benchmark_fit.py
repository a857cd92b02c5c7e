"""Benchmark: does SNE fit its own training networks, and does reading more than its summaries pay?

Trains SNE in one process (no Ray, one worker) on the first --n-train training networks of the random
split of prepared chunk records (the split jobs/train.py uses), and every --eval-every epochs prints
its MSE and Kendall tau on those networks and on the first --n-val validation networks. Then fits
an MLP (256-256) and gradient-boosted trees on the per-layer summaries of the same networks alone
(the links summary SNE reads: each layer's sets and links, layers side by side, and each network's
probe vector where the records carry one and --no-probe-summary is not given; not the peer agreement
jobs/train.py adds). An SNE far behind
the MLP on its training networks underfits; the validation columns say whether that costs it
anything, or whether the chunk encoder reads no more than the summaries already hold.

    python research/benchmark_fit.py --records runs/chunk-records/<fingerprint>-c16-v3 --property frequency
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline import storage
from pipeline.baselines import fit_mlp, fit_trees, layer_set_features, pad_features, scores
from pipeline.chunking import unchunk_record
from pipeline.config import TrainConfig
from pipeline.splits import assign_splits
from pipeline.train import TargetScaler, build_encoder, predict_records, train_in_process


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", required=True, help="a local chunk-records folder (with records/*.parquet)")
    p.add_argument("--property", default="test_accuracy")
    p.add_argument(
        "--n-train", type=int, default=256, help="training networks (the first of the train split)"
    )
    p.add_argument("--n-val", type=int, default=300, help="validation networks (the first of the val split)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--invariance-weight", type=float, default=0.0)
    p.add_argument("--no-layer-statistics", action="store_true", help="the paper's SNE: no per-layer summary")
    p.add_argument(
        "--no-probe-summary", action="store_true", help="weights only: no probe of what each network computes"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the figures here (a path or URI)")
    args = p.parse_args()

    files = sorted(Path(args.records, "records").glob("*.parquet"))
    if not files:
        sys.exit(f"error: no records/*.parquet under {args.records}: run jobs/prepare.py first")
    torch.set_num_threads(args.threads)
    records = sorted((r for f in files for r in pq.read_table(f).to_pylist()), key=lambda r: r["id"])
    missing = [
        r["id"] for r in records if r.get(args.property) is None or r[args.property] != r[args.property]
    ]
    if missing:
        sys.exit(f"error: {len(missing)} record(s) lack property {args.property!r} (e.g. {missing[:3]})")
    split = assign_splits(
        [r["id"] for r in records], [r["family"] for r in records], [r["dataset"] for r in records]
    )
    train = [r for r in records if split[r["id"]] == "train"][: args.n_train]
    val = [r for r in records if split[r["id"]] == "val"][: args.n_val]
    if len(train) < 2 or len(val) < 2:
        sys.exit(
            f"error: need at least 2 training and 2 validation networks, got {len(train)} and {len(val)}"
        )
    print(f"{len(records)} records: fitting {len(train)} training networks, validating on {len(val)}")

    config = TrainConfig(
        property=args.property,
        hidden=args.hidden,
        lr=args.lr,
        invariance_weight=args.invariance_weight,
        layer_statistics=not args.no_layer_statistics,
        probe_summary=not args.no_probe_summary,
        peer_agreement=False,  # no training driver here to fit the peer consensus: the probe alone
        epochs=args.epochs,
        seed=args.seed,
    ).validate()
    targets = np.array([r[args.property] for r in train], dtype=np.float64)
    scaler = TargetScaler(float(targets.mean()), float(targets.std() or 1.0))
    # As the training driver builds it by default: a vector per training dataset, unscaled side inputs.
    encoder = build_encoder(config, tuple(r["dataset"] for r in train))
    rng = np.random.default_rng(args.seed)
    started = time.time()

    def evaluate(rows: list[dict]) -> dict[str, float]:
        out = predict_records(encoder, [rows[i : i + 64] for i in range(0, len(rows), 64)], config, scaler)
        return scores(np.array(out["prediction"]), np.array(out["target"]))

    figures: dict = {"sne": []}
    for epoch, _ in enumerate(train_in_process(encoder, train, config, scaler, rng)):
        if (epoch + 1) % args.eval_every and epoch + 1 != config.epochs:
            continue
        fit, held = evaluate(train), evaluate(val)
        figures["sne"].append({"epoch": epoch + 1, "train": fit, "val": held})
        print(
            f"SNE epoch {epoch + 1:>3}: training networks MSE {fit['mse']:.4g} tau {fit['kendall_tau']:.3f} | "
            f"validation MSE {held['mse']:.4g} tau {held['kendall_tau']:.3f}  ({time.time() - started:.0f} s)",
            flush=True,
        )

    # The summaries SNE reads (and the probes), in the fixed-length form zoo_ceiling gives its trees.
    x = pad_features([layer_set_features(unchunk_record(r), links=True) for r in train + val])
    probes = [r.get("probe") for r in train + val]
    if config.probe_summary and all(v is not None for v in probes):
        x = np.hstack([x, np.array(probes, dtype=np.float64)])
    y = np.array([r[args.property] for r in train + val], dtype=np.float64)
    train_rows, val_rows = np.arange(len(train)), np.arange(len(train), len(train) + len(val))
    for name, fitter in (("MLP on the summaries", fit_mlp), ("trees on the summaries", fit_trees)):
        fit, out = fitter(x, y, train_rows, train_rows), fitter(x, y, train_rows, val_rows)
        figures[name] = {"train": fit, "val": out}
        print(
            f"{name:<23}: training networks MSE {fit['mse']:.4g} tau {fit['kendall_tau']:.3f} | "
            f"validation MSE {out['mse']:.4g} tau {out['kendall_tau']:.3f}"
        )
    if args.json:
        storage.write_json(args.json, {"config": vars(args), **figures})


if __name__ == "__main__":
    main()
