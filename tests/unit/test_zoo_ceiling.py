"""research/zoo_ceiling.py end to end on a small written zoo: its figures, learning curve and plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.splits import assign_splits
from pipeline.zoo import Checkpoint, Layer, native

ARCHITECTURE = json.dumps(
    {
        "family": "mlp",
        "input_shape": [4],
        "ops": [{"op": "linear", "in": 4, "out": 8}, {"op": "relu"}, {"op": "linear", "in": 8, "out": 3}],
    }
)


def _zoo(path: Path, n: int = 200) -> list[Checkpoint]:
    """MLPs whose test accuracy follows their weights' scale: a property the weights carry."""
    rng = np.random.default_rng(0)
    checkpoints = []
    for i in range(n):
        scale = rng.uniform(0.2, 2.0)
        # Runnable (the architecture is recorded), so the job can probe what each network computes.
        layers = [
            Layer(name, "linear", (scale * rng.normal(size=s)).astype(np.float32), np.zeros(s[0], np.float32))
            for name, s in (("classifier.0", (8, 4)), ("classifier.2", (3, 8)))
        ]
        accuracy = float(np.clip(scale / 2 + rng.normal(scale=0.02), 0, 1))
        properties = {"test_accuracy": accuracy, "train_accuracy": min(1.0, accuracy + 0.05)}
        hyper = {"seed": i, "architecture": ARCHITECTURE}
        checkpoints.append(Checkpoint(f"c{i:03d}", "mlp", "digits", layers, properties, hyper))
    native.write_zoo(str(path), checkpoints)
    return checkpoints


def test_ceiling_job_scores_feature_sets_and_scores_its_learning_curve_on_the_fifth_train_holds_out(
    tmp_path, run_job
):
    checkpoints = _zoo(tmp_path / "zoo")
    out, plot = tmp_path / "ceiling.json", tmp_path / "ceiling.png"
    done = run_job(
        "research/zoo_ceiling.py", "--zoo", str(tmp_path / "zoo"), "--json", str(out), "--plot", str(plot)
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert figures["networks"] == 200
    # The weights' scale sets the property, so the weight statistics rank the test half well.
    assert figures["scores"]["statnn"]["kendall_tau"] > 0.6
    assert figures["scores"]["per-layer sets"]["kendall_tau"] > 0.6
    # So does what the networks compute on the data-free probes (their outputs grow with the scale).
    assert figures["scores"]["function probes (data-free)"]["kendall_tau"] > 0.6
    assert "per-layer sets + links + probes" in figures["scores"]
    assert np.isfinite(figures["scores"]["probes + peer agreement"]["kendall_tau"])
    # The curve is scored on the test set of `train.py --test-fraction 0.2`, and fits on the rest.
    fifth = assign_splits([c.id for c in checkpoints], ["mlp"] * 200, ["digits"] * 200, test_fraction=0.2)
    held = sum(1 for s in fifth.values() if s == "test")
    assert figures["learning_curve_test_networks"] == held == 40
    assert sorted(int(n) for n in figures["learning_curve"]) == [40, 80, 160]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
