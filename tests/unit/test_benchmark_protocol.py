"""The benchmark's protocols, baselines and summary, without Ray."""

import math

import pytest

from pipeline.benchmark import (
    check_models,
    check_settings,
    format_markdown,
    mean_baseline,
    protocol_cells,
    score,
    summarize,
)
from pipeline.config import from_dict, paper


def test_random_is_one_split_and_cross_protocols_train_on_each_group_in_turn():
    (cell,) = protocol_cells("random", ["a", "b"], ["mlp"])
    assert cell.split == {"task": "random", "test_fraction": 0.5}
    cells = protocol_cells("cross-dataset", ["b", "a", "c", "a"], ["mlp"] * 4)
    assert [c.name for c in cells] == ["a", "b", "c"]
    assert cells[1].split == {"task": "cross-dataset", "train_datasets": ("b",), "test_datasets": ("a", "c")}
    (mlp, cnn) = sorted(
        protocol_cells("cross-architecture", ["a"] * 2, ["mlp", "cnn"]), key=lambda c: c.name
    )[::-1]
    assert mlp.split["train_families"] == ("mlp",) and mlp.split["test_families"] == ("cnn",)
    with pytest.raises(ValueError, match="at least two dataset"):
        protocol_cells("cross-dataset", ["a", "a"], ["mlp", "cnn"])
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol_cells("leave-one-out", ["a"], ["mlp"])
    with pytest.raises(ValueError, match="unknown model"):
        check_models(["paper", "gpt"])


def test_the_mean_baseline_predicts_each_datasets_training_mean():
    index = {
        "a1": {"dataset": "a", "family": "mlp", "target": 0.2},
        "a2": {"dataset": "a", "family": "mlp", "target": 0.4},
        "b1": {"dataset": "b", "family": "mlp", "target": 0.9},
        "a3": {"dataset": "a", "family": "mlp", "target": 0.5},
        "c1": {"dataset": "c", "family": "mlp", "target": 0.1},
    }
    assignment = {"a1": "train", "a2": "val", "b1": "train", "a3": "test", "c1": "test"}
    pred = mean_baseline(index, assignment)
    assert pred["a3"] == pytest.approx(0.3)  # train + val networks of dataset a
    assert pred["c1"] == pytest.approx((0.2 + 0.4 + 0.9) / 3)  # no training network of c: the overall mean


def _run(model, seed, tau, cell="random", val=None):
    return {
        "model": model,
        "cell": cell,
        "seed": seed,
        "seconds": 1.0,
        "kendall_tau": tau,
        "val_kendall_tau": tau + 0.1 if val is None else val,
        "r2": tau / 2,
        "mse": 0.01,
        "per_dataset": {"a": tau, "b": float("nan")},
        "per_family": {"mlp": tau},
    }


def test_the_summary_gives_mean_and_std_over_seeds_with_the_documented_keys():
    test = {f"n{i}": {"target": i / 10, "dataset": "ab"[i % 2], "family": "mlp"} for i in range(6)}
    scored = score({i: v["target"] * 2 for i, v in test.items()}, test)
    assert scored["kendall_tau"] == pytest.approx(1.0) and set(scored["per_dataset"]) == {"a", "b"}

    summary = summarize(
        [_run("paper", 0, 0.5), _run("paper", 1, 0.7), _run("mean", 0, 0.1, val=float("nan"))],
        "random",
        "z",
        ["paper", "mean"],
        ["random"],
    )
    assert {"protocol", "zoo", "models"} <= set(summary)
    paper = summary["models"]["paper"]
    keys = {"tau_mean", "tau_std", "val_tau_mean", "val_tau_std", "r2_mean", "per_dataset", "seeds"}
    assert keys <= set(paper)
    assert paper["tau_mean"] == pytest.approx(0.6) and paper["tau_std"] == pytest.approx(math.sqrt(0.02))
    # The validation τ each run chose by, beside the test τ: what configurations are compared on.
    assert paper["val_tau_mean"] == pytest.approx(0.7)
    assert paper["val_tau_std"] == pytest.approx(math.sqrt(0.02))
    assert math.isnan(summary["models"]["mean"]["val_tau_mean"])  # the mean chooses nothing
    assert len(paper["seeds"]) == 2 and paper["per_dataset"]["a"]["tau_mean"] == pytest.approx(0.6)
    assert math.isnan(paper["per_dataset"]["b"]["tau_mean"])  # undefined for every seed: shown as "–"
    table = format_markdown(summary, 2)
    assert "| model | val τ | test τ |" in table
    assert "| paper | 0.700 ± 0.141 | 0.600 ± 0.141 |" in table and "| mean | – | 0.100 ± 0.000 |" in table


def test_a_cross_protocol_prints_the_train_test_matrix():
    runs = [
        _run("paper", 0, 0.5, cell="a") | {"per_dataset": {"b": 0.4}},
        _run("paper", 0, 0.6, cell="b") | {"per_dataset": {"a": 0.3}},
    ]
    table = format_markdown(summarize(runs, "cross-dataset", "z", ["paper"], ["a", "b"]), 1)
    assert "| a | – | 0.400 |" in table and "| b | 0.300 | – |" in table


def test_settings_change_every_sne_preset_alike_and_bad_ones_are_named():
    """An ablation (the paper's INR table) is the paper preset with a setting changed, checked up front."""
    assert check_settings({}, ["statnn"]) == {}
    ablation = check_settings({"positional_encoding": "false", "hierarchy": "false"}, ["paper", "mean"])
    changed = from_dict(ablation, paper())
    assert not changed.hierarchy and not changed.positional_encoding and changed.blocks == paper().blocks
    with pytest.raises(ValueError, match="sets seed, task itself"):
        check_settings({"seed": "3", "task": "random"}, ["paper"])
    with pytest.raises(ValueError, match="unknown config key.*hierarchie"):
        check_settings({"hierarchie": "false"}, ["paper"])
    with pytest.raises(ValueError, match="hierarchy: expected a boolean"):
        check_settings({"hierarchy": "maybe"}, ["paper"])
    with pytest.raises(ValueError, match="none of paper, sne, deepsets is run"):
        check_settings({"hierarchy": "false"}, ["statnn"])
    with pytest.raises(ValueError, match="^sne: .*layer summary"):  # the extended preset reads one
        check_settings({"hierarchy": "false"}, ["paper", "sne"])

    summary = summarize([_run("paper", 0, 0.5)], "random", "z", ["paper"], ["random"])
    summary["settings"] = ablation
    assert "changed by: `positional_encoding=false`, `hierarchy=false`." in format_markdown(summary, 1)


def test_the_job_refuses_a_bad_setting_before_anything_starts(run_job):
    done = run_job("benchmark_quality.py", "--models", "paper,statnn", "--set", "hierarchy")
    assert done.returncode != 0 and "--set takes KEY=VALUE, got 'hierarchy'" in done.stderr
    done = run_job("benchmark_quality.py", "--models", "statnn", "--set", "epochs=3")
    assert done.returncode != 0 and "sets epochs itself" in done.stderr
    assert "Traceback" not in done.stderr and "Ray" not in done.stdout + done.stderr
