"""Train a zoo of real networks as Ray tasks; resumable (a rerun skips finished shards), deterministic per seed.

python jobs/make_zoo.py --out URI [--preset demo|small|medium|inr|wild|large] [--format native|smallcnnzoo|modelzoos]
                        [--datasets NAME,...] [--count N] [--seed S] [--num-cpus N] [--json PATH]

A throughput fixture of any size (perturbed copies of an existing zoo's networks, labelled as a fixture in
their hyperparameters: for prepare and training throughput and memory, never for quality figures):
    python jobs/make_zoo.py --out data/replica-zoo --preset replicate --count 100000 --from data/demo-zoo

A zoo in the public Small CNN Zoo layout, one family on one dataset:
    python jobs/make_zoo.py --out data/cnnzoo-digits --preset small --format smallcnnzoo --datasets digits --count 1000
"""

from __future__ import annotations

import argparse

from pipeline import storage
from pipeline.generate import FORMATS, PRESETS, GenerationError, make_zoo
from pipeline.runtime import add_ray_arguments, user_errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="zoo URI to write (local path or s3://bucket/prefix)")
    p.add_argument(
        "--preset",
        default="demo",
        choices=[*PRESETS, "replicate"],
        help="zoo size and mix, or 'replicate' (a throughput fixture, with --from) (default: demo)",
    )
    p.add_argument("--from", dest="source", help="with --preset replicate: the zoo whose networks are copied")
    p.add_argument(
        "--noise",
        type=float,
        default=0.01,
        help="with --preset replicate: relative spread of each copy's weights (default: 0.01)",
    )
    p.add_argument(
        "--format", default="native", choices=list(FORMATS), help="on-disk format (default: native)"
    )
    p.add_argument(
        "--datasets",
        default="",
        help="comma-separated datasets every network trains on (default: each family's own)",
    )
    p.add_argument("--count", type=int, help="build only the preset's first N networks (default: all)")
    p.add_argument("--seed", type=int, default=0, help="zoo seed: same seed, same weights (default: 0)")
    add_ray_arguments(p)
    p.add_argument("--json", help="also write the summary here as JSON (local path or URI)")
    args = p.parse_args()
    if args.preset == "replicate":
        replicate(p, args)
        return
    if args.source:
        p.error("--from is read only with --preset replicate")

    with user_errors(GenerationError):
        summary = make_zoo(
            args.out,
            preset=args.preset,
            format=args.format,
            seed=args.seed,
            num_cpus=args.num_cpus,
            datasets=tuple(d for d in args.datasets.split(",") if d),
            count=args.count,
            verbose=args.verbose,
        )
    print(format_summary(summary))
    if args.json:
        storage.write_json(args.json, summary)


def replicate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from pipeline.replicate import replicate_zoo

    if not args.source or not args.count:
        parser.error("--preset replicate needs --from URI (the zoo to copy) and --count N")
    if args.format != "native" or args.datasets:
        parser.error(
            "--preset replicate writes a native zoo of the source's datasets: drop --format and --datasets"
        )
    with user_errors(ValueError):
        summary = replicate_zoo(args.source, args.out, args.count, seed=args.seed, noise=args.noise)
    print(
        f"zoo {summary['out']}: {summary['checkpoints']} perturbed copies of the networks of {summary['source']} "
        f"(noise {summary['noise']}; a throughput fixture, not for quality figures) in {summary['seconds']:.0f} s"
    )
    if args.json:
        storage.write_json(args.json, summary)


def format_summary(summary: dict) -> str:
    """A few lines: what was built where, and the spread of each family's headline property."""
    lines = [
        f"zoo {summary['out']}: {summary['checkpoints']} checkpoints ({summary['trained']} trained now, "
        f"{summary['skipped']} already there) in {summary['seconds']:.0f} s"
    ]
    if "exported" in summary:
        lines.append(
            f"  {summary['exported']} exported as {summary['format']}; trained copy: {summary['staging']}"
        )
    for family, s in summary["trained_spread"].items():
        lines.append(
            f"  {family:<10} {s['property']:<15} n={s['n']:<5} min {s['min']:.3f}  median {s['median']:.3f}  "
            f"max {s['max']:.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
