"""Train a zoo of real networks as Ray tasks; resumable (a rerun skips finished shards), deterministic per seed.

python jobs/make_zoo.py --out URI [--preset demo|small|medium|inr] [--format native|smallcnnzoo|modelzoos]
                        [--datasets NAME,...] [--count N] [--seed S] [--num-cpus N] [--json PATH]

A zoo in the public Small CNN Zoo layout, one family on one dataset:
    python jobs/make_zoo.py --out data/cnnzoo-digits --preset small --format smallcnnzoo --datasets digits --count 1000
"""

from __future__ import annotations

import argparse
import json

from pipeline import storage
from pipeline.generate import FORMATS, PRESETS, GenerationError, make_zoo
from pipeline.runtime import fail
from pipeline.zoo import ZooError


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="zoo URI to write (local path or s3://bucket/prefix)")
    p.add_argument("--preset", default="demo", choices=list(PRESETS), help="zoo size and mix (default: demo)")
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
    p.add_argument("--num-cpus", type=int, help="local Ray only: CPUs to use")
    p.add_argument("--json", help="also write the summary here as JSON (local path or URI)")
    args = p.parse_args()

    try:
        summary = make_zoo(
            args.out,
            preset=args.preset,
            format=args.format,
            seed=args.seed,
            num_cpus=args.num_cpus,
            datasets=tuple(d for d in args.datasets.split(",") if d),
            count=args.count,
        )
    except (ZooError, ValueError, GenerationError) as e:
        fail(str(e))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        storage.write_json(args.json, summary)


if __name__ == "__main__":
    main()
