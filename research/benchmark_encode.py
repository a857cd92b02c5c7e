"""Benchmark SNE on one big network: forward time, training-step time and peak memory against its size.

For each size, a fresh process builds one synthetic checkpoint of about that many parameters (random
weights: timing and memory do not depend on the values), chunks it, and times with the preset's encoder
(2 threads by default):
- forward: ``encoder(collate([record]))`` without gradients, the best of a few runs;
- training step: ``pipeline.train.train_step`` on the one network, as a Ray Train worker runs it (its
  permuted copy for the invariance loss when λ > 0, backward, Adam step);
- peak RSS of that process (the collate and the chunk record included).
Then the scaling exponent: the slope of log time against log parameters over the sizes from 1e5 up.

    python research/benchmark_encode.py [--params 1e4,1e5,1e6,1e7,2.5e7] [--layers linear|conv3x3]
                                        [--chunk-size 16] [--preset paper] [--threads 2] [--json PATH]

``--layers linear`` is a 10-layer MLP (one scalar per set element); ``conv3x3`` a 10-layer CNN of 3×3
kernels (nine scalars per element), the element size that ResNet convs have; ``resnet18`` the real
ResNet-18 of ``jobs/make_zoo.py --preset large`` (its 1×1 shortcuts, batch norms and linear head
included) at the channel width that comes closest to the size, on 1×16×16 inputs.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import numpy as np

LAYERS = 10


def synthetic_checkpoint(params: int, layers: str):
    """A plain stack of LAYERS square layers of about ``params`` parameters, random normal weights; or, for
    ``resnet18``, that network as built (PyTorch's initialisation)."""
    from pipeline.zoo.checkpoint import Checkpoint, Layer

    if layers == "resnet18":
        import torch

        from pipeline import families

        torch.manual_seed(0)
        # 11.17 M parameters at width 64, growing with its square.
        width = max(4, round(64 * math.sqrt(params / 11.17e6)))
        architecture = families.resnet18_architecture(channels=1, size=16, width=width)
        return families.checkpoint_from_module(
            families.build_module(architecture),
            id="synthetic",
            family="resnet18",
            dataset="none",
            architecture=architecture,
            properties={"test_accuracy": 0.5, "train_accuracy": 0.5},
        )
    rng = np.random.default_rng(0)
    per_unit = 9 if layers == "conv3x3" else 1
    width = max(2, round(math.sqrt(params / (LAYERS * per_unit))))
    shape = (width, width, 3, 3) if layers == "conv3x3" else (width, width)
    kind = "conv2d" if layers == "conv3x3" else "linear"
    scale = 1.0 / math.sqrt(width * per_unit)
    stack = [
        Layer(
            f"layer{i}",
            kind,
            (rng.standard_normal(shape) * scale).astype(np.float32),
            np.zeros(width, np.float32),
        )
        for i in range(LAYERS)
    ]
    return Checkpoint("synthetic", "synthetic", "none", stack, {"test_accuracy": 0.5, "train_accuracy": 0.5})


def measure_one(
    params: int,
    layers: str,
    chunk_size: int,
    preset: str,
    threads: int,
    train_step_up_to: float,
    allocator: str,
) -> dict:
    import torch

    from pipeline import config as presets
    from pipeline.chunking import chunk_checkpoint
    from pipeline.runtime import bound_allocator_memory
    from pipeline.train import TargetScaler, build_encoder, collate, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if allocator == "bounded":
        bound_allocator_memory()
    config = getattr(presets, preset)()
    config = presets.from_dict({"chunk_size": chunk_size}, config)
    checkpoint = synthetic_checkpoint(params, layers)
    record = chunk_checkpoint(checkpoint, chunk_size)
    encoder = build_encoder(config, ("none",))
    forward = []
    encoder.eval()
    with torch.no_grad():
        for _ in range(3 if params <= 1e6 else 1):
            start = time.perf_counter()
            encoder(collate([record], config))
            forward.append(time.perf_counter() - start)
    encoder.train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=config.lr)
    rng, scaler = np.random.default_rng(0), TargetScaler(0.5, 0.2)
    steps = []
    for _ in range((2 if params <= 1e6 else 1) if params <= train_step_up_to else 0):
        start = time.perf_counter()
        train_step(encoder, optimizer, [record], config, scaler, rng)
        steps.append(time.perf_counter() - start)
    return {
        "params": checkpoint.num_params,
        "layers": layers,
        "chunks": int(sum(np.asarray(m).size for m in record["weight_mask"]) // chunk_size),
        "forward_s": min(forward),
        "train_step_s": min(steps) if steps else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def exponent(rows: list[dict], key: str) -> float:
    """Slope of log(key) against log(params) over the sizes from 1e5 up (where fixed costs no longer rule)."""
    points = [(math.log(r["params"]), math.log(r[key])) for r in rows if r["params"] >= 1e5 and r[key]]
    if len(points) < 2:
        return float("nan")
    x, y = np.array(points).T
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="1e4,1e5,1e6,1e7,2.5e7", help="comma-separated sizes")
    p.add_argument("--layers", default="linear", choices=("linear", "conv3x3", "resnet18"))
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--preset", default="paper", help="the TrainConfig preset whose encoder runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--train-step-up-to",
        type=float,
        default=3e7,
        help="time training steps up to this size (they cost ~6× a forward)",
    )
    p.add_argument(
        "--allocator",
        default="bounded",
        choices=("bounded", "default"),
        help="bounded: glibc's mmap threshold fixed as Ray Train workers fix it (pipeline.runtime); default: as is",
    )
    p.add_argument("--json", help="write the rows and exponents here")
    p.add_argument("--one", type=float, help=argparse.SUPPRESS)  # internal: measure one size in this process
    args = p.parse_args()
    if args.one:
        row = measure_one(
            int(args.one),
            args.layers,
            args.chunk_size,
            args.preset,
            args.threads,
            args.train_step_up_to,
            args.allocator,
        )
        print(json.dumps(row))
        return
    rows = []
    for size in (float(s) for s in args.params.split(",")):
        # One process per size: its peak RSS is that size's alone.
        command = [
            sys.executable,
            __file__,
            "--one",
            str(size),
            "--layers",
            args.layers,
            "--chunk-size",
            str(args.chunk_size),
            "--preset",
            args.preset,
            "--threads",
            str(args.threads),
            "--train-step-up-to",
            str(args.train_step_up_to),
            "--allocator",
            args.allocator,
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{row['params']:>12,} params {row['chunks']:>10,} chunks  forward {row['forward_s']:8.2f} s "
            f"({1e6 * row['forward_s'] / row['params']:.2f} µs/param)  train step "
            f"{'not timed' if row['train_step_s'] is None else format(row['train_step_s'], '8.2f') + ' s'}  "
            f"peak RSS {row['peak_rss_mb']:,.0f} MB",
            flush=True,
        )
    summary = {
        "rows": rows,
        "exponent": exponent(rows, "forward_s"),
        "train_step_exponent": exponent(rows, "train_step_s"),
        "layers": args.layers,
        "chunk_size": args.chunk_size,
        "preset": args.preset,
        "threads": args.threads,
        "allocator": args.allocator,
    }
    print(
        f"scaling exponent: forward {summary['exponent']:.2f}, training step {summary['train_step_exponent']:.2f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
