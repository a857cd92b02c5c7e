"""The quality benchmark on a real zoo: every model × seed on one split, the documented summary, MLflow runs."""

import json
import math

import pytest

from pipeline import tracking
from pipeline.benchmark import format_markdown, run_benchmark
from pipeline.config import from_dict

pytestmark = pytest.mark.integration


def _base(bucket, tmp_path):
    return from_dict(
        {
            "zoo": f"{bucket}/zoo",
            "storage": f"{bucket}/benchmark-runs",
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "num_workers": 1,
        }
    )


def test_random_protocol_runs_each_model_and_seed_on_the_same_split(tiny_zoo, tmp_path):
    base = _base(tiny_zoo, tmp_path)
    models = ["paper", "deepsets", "statnn", "statnn-side", "mean"]
    summary = run_benchmark(base.zoo, "random", models, 2, base, epochs=1, log=lambda _: None)

    assert summary["protocol"] == "random" and list(summary["models"]) == models
    for name, model in summary["models"].items():
        assert {"tau_mean", "tau_std", "r2_mean", "per_dataset", "seeds"} <= set(model), name
        assert [r["seed"] for r in model["seeds"]] == [0, 1]
    for name in ("paper", "deepsets", "statnn", "statnn-side"):
        assert math.isfinite(summary["models"][name]["tau_mean"]), name
        assert math.isfinite(summary["models"][name]["val_tau_mean"]), name  # what each run chose by
    # Two seeds of the same model train two different encoders on the same networks.
    paper = summary["models"]["paper"]["seeds"]
    assert paper[0]["kendall_tau"] != paper[1]["kendall_tau"] or paper[0]["mse"] != paper[1]["mse"]
    json.dumps(summary)  # what --json writes

    client = tracking._client(summary["tracking_uri"])
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["benchmark"] == "random"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'"
    )
    assert len(children) == 10 and all("test_kendall_tau" in c.data.metrics for c in children)
    chose = [c for c in children if not c.data.params.get("model", "").startswith("mean")]
    assert all("best_val_kendall_tau" in c.data.metrics for c in chose)
    assert "| paper |" in format_markdown(summary, 2)


def test_cross_dataset_protocol_fills_the_train_test_matrix(tiny_zoo, tmp_path):
    base = _base(tiny_zoo, tmp_path)
    summary = run_benchmark(base.zoo, "cross-dataset", ["statnn", "mean"], 1, base, log=lambda _: None)
    cells = summary["cells"]
    assert len(cells) >= 2
    for cell in cells:  # each training dataset is tested on every other one
        assert set(summary["models"]["statnn"]["per_cell"][cell]["per_dataset"]) == set(cells) - {cell}
    assert "trained on (rows)" in format_markdown(summary, 1)


def test_the_mlp_baseline_refuses_a_zoo_of_several_architectures_before_any_run(tiny_zoo, tmp_path):
    base = _base(tiny_zoo, tmp_path)
    with pytest.raises(ValueError, match="one architecture"):
        run_benchmark(base.zoo, "random", ["statnn", "mlp"], 1, base, log=lambda _: None)
    client = tracking._client(base.tracking_uri)
    experiment = client.get_experiment_by_name(base.experiment)
    assert experiment is None or not client.search_runs([experiment.experiment_id])
