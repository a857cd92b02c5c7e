"""How predictable is a zoo's property from weights? A benchmark of the zoo, not of SNE.

Fits gradient-boosted trees on the random task's split (the same split jobs/train.py uses) with
these feature sets: the true hyperparameters alone, STATNN's weight statistics, per-layer set
features (baselines.layer_set_features: what an encoder that summarises each layer on its own can
see; also fed to an MLP instead of the trees), the same with each layer's links to its neighbours
(baselines.link_summaries: with them, SNE's layer summary), the network's outputs on fixed data-free noise
inputs (pipeline.probes: SNE's probe summary; where every checkpoint names a runnable architecture),
alone and beside sets + links, the probes with each classifier's agreement on them with the fitted
networks of its dataset (pipeline.probes.PeerConsensus), and
STATNN + hyperparameters, an oracle no
weight-only method has (it knows the learning rate, epochs, dataset, ... exactly). Where the zoo
records train accuracy, also train accuracy + hyperparameters: the network read as a function on
its own training data, which shows how much of the property the weights determine at all. On a
sine-wave INR zoo (family siren; property frequency or amplitude) it also reads the property from
each network's function (generate.fitted_sine): the floor on the error of any weight-based method.
Then a learning curve: the same tree fits on a quarter, a half and all of the other four fifths of
the zoo (400 / 800 / 1,600 networks of a 2,000-network zoo), scored on the held-out fifth that
`jobs/train.py --test-fraction 0.2` tests on.

    python research/zoo_ceiling.py --zoo data/small-zoo [--property test_accuracy] [--json PATH] [--plot PNG]
    python research/zoo_ceiling.py --zoo data/inr-zoo --property frequency
    python research/zoo_ceiling.py --zoo data/small-zoo --task cross-architecture \
        --train-families smallcnn,cnn,mlp --test-families cnn-s

A cross task uses jobs/train.py's split for the same flags (and has no learning curve).
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from pipeline import storage
from pipeline.baselines import fit_mlp, fit_trees, layer_set_features, pad_features, scores, state_features
from pipeline.config import TASKS
from pipeline.evaluation import save_figure
from pipeline.probes import PEER_FEATURES, PeerConsensus, run_probes
from pipeline.runtime import fail
from pipeline.splits import assign_splits
from pipeline.zoo import Rejection, ZooError
from pipeline.zoo.listing import read_zoo

LEARNING_CURVE_TEST_FRACTION = 0.2
PEER_ROW = "probes + peer agreement"
SINE_PROPERTIES = {"frequency": 0, "amplitude": 1}  # position in generate.fitted_sine's (b, a)


def hyperparameter_matrix(rows: list[dict], exclude: str) -> np.ndarray:
    """Numbers as they are, strings as category codes, anything else (None, nested) as missing.

    ``exclude`` is the property being predicted: a generated INR records its target among its
    hyperparameters, and an oracle handed the answer measures nothing.
    """
    keys = sorted({k for r in rows for k in r} - {exclude})
    codes: dict[tuple[str, str], int] = {}
    out = np.full((len(rows), len(keys)), np.nan)
    for i, r in enumerate(rows):
        for j, k in enumerate(keys):
            v = r.get(k)
            if isinstance(v, bool | int | float) and math.isfinite(float(v)):
                out[i, j] = float(v)
            elif isinstance(v, str) and not v.startswith("{"):
                out[i, j] = codes.setdefault((k, v), len(codes))
    return out[:, ~np.isnan(out).all(axis=0)]  # a column that is never set carries nothing


def read_from_function(checkpoints: list, prop: str) -> np.ndarray:
    """The property of each sine-wave INR as its own output shows it (generate.fitted_sine)."""
    from pipeline.families import module_from_checkpoint
    from pipeline.generate import fitted_sine

    return np.array([fitted_sine(module_from_checkpoint(c))[SINE_PROPERTIES[prop]] for c in checkpoints])


def _line(metrics: dict[str, float]) -> str:
    return f"tau {metrics['kendall_tau']:.3f}  MSE {metrics['mse']:.4g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", required=True)
    p.add_argument("--format", default="auto")
    p.add_argument("--property", default="test_accuracy")
    p.add_argument("--task", default="random", choices=TASKS)
    p.add_argument(
        "--test-fraction", type=float, default=0.5, help="random task: share held out for test (as train.py)"
    )
    for side in ("train", "test"):
        for what in ("datasets", "families"):
            p.add_argument(f"--{side}-{what}", default="", help=f"cross tasks: comma-separated {what}")
    p.add_argument("--json", help="write the figures here as JSON")
    p.add_argument("--plot", help="draw test tau per feature set and the learning curve into this PNG")
    args = p.parse_args()
    try:
        items = list(read_zoo(args.zoo, args.format))
    except ZooError as e:
        fail(str(e))
    rejected, unlabelled, checkpoints = [], [], []
    for item in items:
        if isinstance(item, Rejection):
            rejected.append(item)
        else:
            (unlabelled if item.properties.get(args.property) is None else checkpoints).append(item)
    if rejected or unlabelled:
        print(
            f"left out: {len(rejected)} rejected by the reader, {len(unlabelled)} without {args.property!r}"
        )
    if len(checkpoints) < 100:
        fail(f"{len(checkpoints)} checkpoints with {args.property!r}: too few for a ceiling estimate")
    y = np.array([float(c.properties[args.property]) for c in checkpoints])
    groups = ([c.id for c in checkpoints], [c.family for c in checkpoints], [c.dataset for c in checkpoints])
    try:
        split = assign_splits(
            *groups,
            args.task,
            **{
                f"{side}_{what}": tuple(v for v in getattr(args, f"{side}_{what}").split(",") if v)
                for side in ("train", "test")
                for what in ("datasets", "families")
            },
            test_fraction=args.test_fraction,
        )
    except ValueError as e:
        fail(str(e))
    where = {
        s: np.array([i for i, c in enumerate(checkpoints) if split.get(c.id) == s], dtype=int)
        for s in ("train", "val", "test")
    }

    fitted = np.concatenate([where["train"], where["val"]])
    states = [c.state_dict() for c in checkpoints]
    features = {
        "hyperparameters": hyperparameter_matrix(
            [dict(c.hyperparameters) for c in checkpoints], args.property
        ),
        "statnn": pad_features([state_features(s) for s in states]),
        "per-layer sets": pad_features([layer_set_features(s) for s in states]),
        "per-layer sets + links": pad_features([layer_set_features(s, links=True) for s in states]),
    }
    runs = [run_probes(c) for c in checkpoints]
    if all(r is not None for r in runs):
        probes = features["function probes (data-free)"] = np.stack([r[0] for r in runs])
        features["per-layer sets + links + probes"] = np.hstack([features["per-layer sets + links"], probes])
        # Each classifier's agreement on the probes with the fitted networks of its dataset (SNE's peer
        # summary): the trees' reference is what they fit on, as SNE's is its training networks.
        consensus = PeerConsensus.fit(
            [checkpoints[i].id for i in fitted],
            [checkpoints[i].dataset for i in fitted],
            [runs[i][1] for i in fitted],
        )
        agreement = [
            consensus.features(c.id, c.dataset, r[1]) for c, r in zip(checkpoints, runs, strict=True)
        ]
        if any(a is not None for a in agreement):
            nan = np.full(PEER_FEATURES, np.nan)
            features[PEER_ROW] = np.hstack([probes, np.stack([nan if a is None else a for a in agreement])])
    else:
        print(f"no probe rows: {sum(r is None for r in runs)} checkpoints name no runnable architecture")
    features["statnn + hyperparameters (oracle)"] = np.hstack(
        [features["statnn"], features["hyperparameters"]]
    )
    if args.property != "train_accuracy" and all(
        c.properties.get("train_accuracy") is not None for c in checkpoints
    ):
        # Not a weight-only method either: the network run on its own training data. It shows how
        # much of the property the weights determine once read as a function.
        features["train accuracy + hyperparameters"] = np.hstack(
            [
                np.array([[float(c.properties["train_accuracy"])] for c in checkpoints]),
                features["hyperparameters"],
            ]
        )
    figures: dict = {
        "zoo": args.zoo,
        "property": args.property,
        "networks": len(checkpoints),
        "task": args.task,
        "test_variance": float(y[where["test"]].var()),
        "scores": {},
    }
    print(
        f"{args.zoo}: {len(checkpoints)} networks; {args.task} task, fit on {len(fitted)}, test on "
        f"{len(where['test'])} (variance of {args.property} there: {figures['test_variance']:.4g})"
    )
    for name, x in features.items():
        # Trees have no epochs to select: they fit train + val, as jobs/train.py's STATNN does.
        figures["scores"][name] = fit_trees(x, y, fitted, where["test"])
        print(f"  {name:36s} test {_line(figures['scores'][name])}")
    row = fit_mlp(features["per-layer sets"], y, fitted, where["test"])
    figures["scores"]["per-layer sets, MLP instead of trees"] = row
    print(f"  {'per-layer sets, MLP instead of trees':36s} test {_line(row)}")
    if args.property in SINE_PROPERTIES and all(c.family == "siren" for c in checkpoints):
        read = read_from_function([checkpoints[i] for i in where["test"]], args.property)
        row = scores(read, y[where["test"]])
        figures["scores"]["read from the function"] = row
        print(f"  {'read from the function (no training)':36s} test {_line(row)}")

    if args.task != "random":
        _write(figures, args.json, args.plot)
        return
    # Learning curve, scored on the test set of `train.py --test-fraction 0.2` (a fifth of the zoo, inside
    # the half above), so an SNE run with that flag is scored on the same networks; the trees fit the
    # first n of the rest, the train and val networks above first.
    fifth = assign_splits(*groups, "random", test_fraction=LEARNING_CURVE_TEST_FRACTION)
    held = np.array([i for i, c in enumerate(checkpoints) if fifth[c.id] == "test"], dtype=int)
    ordered = np.concatenate([where["train"], where["val"], where["test"]])
    pool = np.array([i for i in ordered if fifth[checkpoints[i].id] != "test"], dtype=int)
    figures["learning_curve"] = {}
    figures["learning_curve_test_networks"] = len(held)
    print(f"learning curve (on {len(held)} held-out networks: the test set of --test-fraction 0.2):")
    for n in (len(pool) // 4, len(pool) // 2, len(pool)):
        # The peer row's reference was fitted on the split above, which overlaps the held-out fifth.
        row = {name: fit_trees(x, y, pool[:n], held) for name, x in features.items() if name != PEER_ROW}
        figures["learning_curve"][n] = row
        print(f"  {n:5d} train: " + ", ".join(f"{k} {_line(v)}" for k, v in row.items()))
    _write(figures, args.json, args.plot)


def _write(figures: dict, path: str | None, plot: str | None) -> None:
    if path:
        storage.write_json(path, figures)
    if plot:
        print(f"plot: {ceiling_plot(figures, plot)}")


def ceiling_plot(figures: dict, path: str) -> str:
    """Test tau of each feature set (bars) and, for the random task, tau against the number of training
    networks (lines, one per feature set); writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = {int(n): row for n, row in (figures.get("learning_curve") or {}).items()}  # JSON keys are str
    fig, axes = plt.subplots(1, 2 if curve else 1, figsize=(13.5 if curve else 6.5, 4.2), squeeze=False)
    names = list(figures["scores"])
    taus = [figures["scores"][n]["kendall_tau"] for n in names]
    bars = axes[0, 0]
    bars.barh(range(len(names)), taus, color="tab:blue")
    bars.set_yticks(range(len(names)), names, fontsize=8)
    bars.invert_yaxis()
    for i, t in enumerate(taus):
        bars.text(t, i, f" {t:.3f}", va="center", fontsize=8)
    bars.set_xlim(min(0.0, *taus), 1.1)  # room for the labels
    bars.set_xlabel(f"test Kendall τ of {figures['property']}")
    bars.set_title(f"{figures['task']} task, {figures['networks']} networks", fontsize=10)
    if curve:
        line = axes[0, 1]
        sizes = sorted(curve)
        for name in curve[sizes[0]]:
            line.plot(sizes, [curve[n][name]["kendall_tau"] for n in sizes], marker="o", label=name)
        line.set_xscale("log", base=2)
        line.set_xticks(sizes, [str(n) for n in sizes])
        line.set_xlabel("training networks")
        line.set_ylabel("Kendall τ on the held-out fifth of the zoo")
        line.set_title("learning curve (gradient-boosted trees)", fontsize=10)
        line.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside: lines fill the axes
        line.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()
