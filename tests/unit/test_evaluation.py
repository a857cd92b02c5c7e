import math

import numpy as np

from pipeline.evaluation import regression_metrics, scatter_plot, subset_metrics


def test_metrics_of_perfect_reversed_and_tiny_predictions():
    y = np.array([0.1, 0.4, 0.2, 0.9])
    assert regression_metrics(y, y) == {"kendall_tau": 1.0, "r2": 1.0, "mse": 0.0, "n": 4}
    assert regression_metrics(-y, y)["kendall_tau"] == -1.0
    assert math.isnan(regression_metrics(y[:1], y[:1])["kendall_tau"])


def test_subsets_cover_each_dataset_and_family():
    y = np.linspace(0, 1, 6)
    rows = subset_metrics(y, y, ["a", "a", "b", "b", "b", "a"], ["d1"] * 3 + ["d2"] * 3)
    assert [r["subset"] for r in rows] == ["all", "dataset=d1", "dataset=d2", "family=a", "family=b"]
    assert [r["n"] for r in rows] == [6, 3, 3, 3, 3]


def test_scatter_plot_writes_a_png(tmp_path):
    y = np.linspace(0, 1, 10)
    path = scatter_plot(y, y, ["a"] * 5 + ["b"] * 5, str(tmp_path / "s.png"), "t")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
