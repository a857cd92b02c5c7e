"""Print what a zoo holds: counts accepted and rejected (with reasons), families, datasets, property ranges.

python jobs/inspect_zoo.py ZOO_URI [--format auto|native|smallcnnzoo|modelzoos|safetensors|wildpark]
                           [--steps final|all] [--epoch N] [--json PATH]
"""

from __future__ import annotations

import argparse

from pipeline import storage
from pipeline.runtime import user_errors
from pipeline.zoo import FORMATS
from pipeline.zoo.summary import format_summary, summarize_zoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("zoo", help="zoo URI (local path or s3://bucket/prefix)")
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS])
    p.add_argument(
        "--steps", default="final", choices=["final", "all"], help="smallcnnzoo, wildpark: which steps"
    )
    p.add_argument("--epoch", type=int, help="modelzoos: which epoch (default: each trial's last)")
    p.add_argument("--json", help="also write the summary as JSON here (a path or URI)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = p.parse_args()

    with user_errors():
        summary = summarize_zoo(
            args.zoo, args.format, steps=args.steps, epoch=args.epoch, progress=not args.no_progress
        )
    print(format_summary(summary))
    if args.json:
        storage.write_json(args.json, summary)


if __name__ == "__main__":
    main()
