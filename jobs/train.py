"""Train SNE on a zoo with Ray Train, evaluate it beside STATNN, and track everything in MLflow.

With no arguments this is the embedded demo: it builds the demo zoo if missing, prepares chunk
records, trains, evaluates, and prints the test Kendall tau of SNE and STATNN.

    python jobs/train.py [--zoo URI] [--task random|cross-dataset|cross-architecture] [--json PATH] ...
"""

from __future__ import annotations

import argparse
import math

from pipeline import config as cfg
from pipeline import storage
from pipeline.runtime import fail, start_ray
from pipeline.tracking import ui_command
from pipeline.zoo import ZooError


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cfg.add_arguments(p)
    p.add_argument("--num-cpus", type=int, help="local Ray only: CPUs to use")
    p.add_argument("--json", help="write the final metrics here as JSON")
    args = p.parse_args()
    try:
        config = cfg.from_args(args)
    except ValueError as e:
        fail(str(e))

    start_ray(args.num_cpus)
    if config.zoo == cfg.TrainConfig().zoo:
        # The embedded demo builds its zoo on first use; make_zoo resumes a partial one and
        # returns in about a second when it is complete.
        from pipeline.generate import make_zoo

        print(f"demo zoo: {config.zoo} (built on first use: a few minutes, once)")
        make_zoo(config.zoo, preset="demo", seed=0)

    from pipeline.driver import run_training

    try:
        final = run_training(config)
    except (ZooError, ValueError, FileNotFoundError) as e:
        fail(str(e))

    print()
    print(f"test Kendall tau  SNE: {final['test_kendall_tau']:.3f}", end="")
    if "statnn_test_kendall_tau" in final:
        print(f"   STATNN: {final['statnn_test_kendall_tau']:.3f}", end="")
    print(
        f"   (R2 {final['test_r2']:.3f}, MSE {final['test_mse']:.5f}; best val tau {final['best_val_kendall_tau']:.3f} at epoch {final['best_epoch'] + 1})"
    )
    print(
        f"  on its own training networks: tau {final['train_kendall_tau']:.3f}, R2 {final['train_r2']:.3f}, "
        f"MSE {final['train_mse']:.5f}"
    )
    for row in final["per_subset"][1:]:
        tau = row["kendall_tau"]
        print(f"  {row['subset']:<28} n={row['n']:<5} tau={'   n/a' if math.isnan(tau) else f'{tau:6.3f}'}")
    print(f"MLflow run {final['run_id']} in experiment '{final['experiment']}'; open the UI with:")
    print(f"  {ui_command(final['tracking_uri'])}")
    print(f"encoder: {final['encoder_uri']}   checkpoint: {final['checkpoint_uri']}")
    if args.json:
        storage.write_json(args.json, final)


if __name__ == "__main__":
    main()
