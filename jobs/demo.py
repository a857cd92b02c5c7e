"""The embedded demo: the extended model and the paper's SNE on the demo zoo, side by side with STATNN.

Builds the demo zoo on first use, trains the `demo` preset (weights, layer summaries, probes, dataset
vectors) and the `paper` preset (the published SNE: weights only) on the same split, and prints their
test Kendall tau beside STATNN's (gradient-boosted trees on 7 statistics per tensor).

    python jobs/demo.py [--epochs N] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses

from pipeline import config as cfg
from pipeline import storage
from pipeline.evaluation import run_summary
from pipeline.runtime import add_ray_arguments, ensure_demo_zoo, start_ray, user_errors

READS = {"demo": "weights, layer summaries, probes, dataset vectors", "paper": "weights only"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, help="epochs of each SNE run (default: each preset's)")
    add_ray_arguments(p)
    p.add_argument("--json", help="write both runs' final metrics here as JSON")
    args = p.parse_args()

    with user_errors():
        start_ray(args.num_cpus, verbose=args.verbose)
        ensure_demo_zoo(cfg.TrainConfig().zoo)
    from pipeline.driver import run_training

    finals = {}
    for preset in READS:
        # STATNN sees the same split in both runs: fit it once, beside the paper preset.
        config = dataclasses.replace(cfg.PRESETS[preset](), statnn=preset == "paper")
        if args.epochs:
            config = dataclasses.replace(config, epochs=args.epochs)
        config.validate()

        print(f"\n=== SNE, preset {preset} ({READS[preset]}) ===")
        with user_errors():
            finals[preset] = run_training(config)
        print(run_summary(finals[preset], preset))

    statnn = finals["paper"]
    rows = [(f"SNE, preset {p} ({READS[p]})", f["test_kendall_tau"], f["test_r2"]) for p, f in finals.items()]
    rows.append(
        (
            "STATNN (trees on 7 statistics per tensor)",
            statnn["statnn_test_kendall_tau"],
            statnn["statnn_test_r2"],
        )
    )
    width = max(len(label) for label, _, _ in rows)
    print(f"\n{'model (same split, test networks)':<{width}}  test tau      R2")
    for label, tau, r2 in rows:
        print(f"{label:<{width}}  {tau:8.3f} {r2:7.3f}")
    if args.json:
        storage.write_json(args.json, finals)


if __name__ == "__main__":
    main()
