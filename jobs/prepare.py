"""Turn a zoo into chunk records (pad → chunk) with Ray Data, cached on storage.

python jobs/prepare.py --zoo URI --chunk-size C [--out URI] [--format auto] [--no-probe] [--json PATH]
"""

from __future__ import annotations

import argparse

from pipeline import storage
from pipeline.config import TrainConfig
from pipeline.data import prepare_chunk_records
from pipeline.runtime import add_ray_arguments, start_ray, user_errors
from pipeline.zoo import FORMATS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", required=True, help="zoo URI (local path or s3://bucket/prefix)")
    p.add_argument("--chunk-size", type=int, required=True, help="elements per chunk (C)")
    p.add_argument("--out", help="output URI; default: derived from zoo fingerprint, chunk size, schema")
    p.add_argument(
        "--cache-root",
        default=storage.join(TrainConfig().storage, "chunk-records"),
        help="where derived outputs live (default: %(default)s)",
    )
    p.add_argument("--format", default="auto", choices=["auto", *FORMATS])
    p.add_argument(
        "--steps", default="final", choices=["final", "all"], help="smallcnnzoo, wildpark: which steps"
    )
    p.add_argument("--epoch", type=int, help="modelzoos: which epoch (default: the last)")
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="skip running the networks on the data-free probes: several times faster, for encoders that read "
        "the weights alone (--preset paper, weights, deepsets)",
    )
    add_ray_arguments(p)
    p.add_argument("--json", help="write the summary here as JSON")
    args = p.parse_args()

    with user_errors():
        start_ray(args.num_cpus, verbose=args.verbose)
        summary = prepare_chunk_records(
            args.zoo,
            args.chunk_size,
            out=args.out,
            cache_root=args.cache_root,
            format=args.format,
            steps=args.steps,
            epoch=args.epoch,
            probe=not args.no_probe,
        )
    state = "reused cached" if summary.reused else f"wrote in {summary.seconds:.1f} s"
    print(
        f"{summary.records} chunk records, {summary.rejected} rejected of {summary.listed} listed "
        f"(chunk size {summary.chunk_size}, format {summary.format}); {state}: {summary.output}"
    )
    unprobed = summary.records - summary.probed
    if not summary.probes:
        print("  not probed (--no-probe): for encoders that read the weights alone")
    else:
        print(
            f"  {summary.probed} of {summary.records} networks probed (what they compute on data-free inputs)"
            + (
                f"; {unprobed} name no runnable architecture, and SNE reads only their weights"
                if unprobed
                else ""
            )
        )
    for reason, n in sorted(summary.rejected_reasons.items(), key=lambda kv: -kv[1]):
        print(f"  rejected {n}: {reason}")
    if args.json:
        storage.write_json(args.json, summary.to_dict())


if __name__ == "__main__":
    main()
