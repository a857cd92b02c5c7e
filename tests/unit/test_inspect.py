"""Format detection, the zoo summary, and the inspect job's command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.zoo import Checkpoint, Layer, ZooError, detect_format, modelzoos, native, smallcnnzoo
from pipeline.zoo.summary import format_summary, reason_group, summarize_zoo

SMALLCNN = [
    ("conv2d", (16, 1, 3, 3)),
    ("conv2d", (16, 16, 3, 3)),
    ("conv2d", (16, 16, 3, 3)),
    ("linear", (10, 16)),
]
MLP = [("linear", (8, 4)), ("linear", (3, 8))]


def make_checkpoint(
    i: int, shapes=SMALLCNN, family="smallcnn", dataset="digits", test_accuracy=0.5
) -> Checkpoint:
    rng = np.random.default_rng(i)
    names = (
        ["conv2d", "conv2d_1", "conv2d_2", "dense"]
        if shapes is SMALLCNN
        else [f"l{j}" for j in range(len(shapes))]
    )
    layers = [
        Layer(n, kind, rng.normal(size=s).astype(np.float32), rng.normal(size=s[0]).astype(np.float32))
        for n, (kind, s) in zip(names, shapes, strict=True)
    ]
    properties = {"test_accuracy": test_accuracy, "train_accuracy": 0.9}
    return Checkpoint(f"c{i}", family, dataset, layers, properties, {"seed": i})


def test_detect_format_for_each_layout_and_explain_otherwise(tmp_path):
    checkpoints = [make_checkpoint(i) for i in range(2)]
    native.write_zoo(str(tmp_path / "n"), checkpoints)
    smallcnnzoo.write_zoo(str(tmp_path / "s" / "digits"), checkpoints)  # a parent of dataset folders
    modelzoos.write_zoo(str(tmp_path / "m"), checkpoints)
    assert detect_format(str(tmp_path / "n")) == "native"
    assert detect_format(str(tmp_path / "s")) == "smallcnnzoo"
    assert detect_format(str(tmp_path / "s" / "digits")) == "smallcnnzoo"
    assert detect_format(str(tmp_path / "m")) == "modelzoos"

    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "readme.txt").write_text("hello")
    with pytest.raises(ZooError, match=r"cannot detect the format .*odd.*readme\.txt"):
        detect_format(str(tmp_path / "odd"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooError, match="empty zoo"):
        detect_format(str(tmp_path / "empty"))
    with pytest.raises(ZooError, match="does not exist"):
        detect_format(str(tmp_path / "missing"))


def test_summary_counts_groups_and_ranges(tmp_path):
    zoo = str(tmp_path / "zoo")
    good = [make_checkpoint(i, test_accuracy=a) for i, a in enumerate((0.2, 0.4, 0.9))]
    good.append(make_checkpoint(3, shapes=MLP, family="mlp", dataset="shapes", test_accuracy=0.6))
    bad = [make_checkpoint(10 + i) for i in range(3)]
    bad[0].layers[0].weight[0, 0, 0, 0] = np.nan
    bad[1].layers[0].weight[:2] = np.inf  # a different count of non-finite values: the same group
    bad[2].family = "cnn-s"
    native.write_zoo(zoo, good + bad)

    d = summarize_zoo(zoo, progress=False)
    assert d["format"] == "native" and d["listed"] == 7 and d["accepted"] == 4
    assert sorted(r["id"] for r in d["rejected"]) == ["c10", "c11", "c12"]
    groups = {g["count"]: g for g in d["rejection_reasons"]}
    assert groups[2]["examples"] == ["c10", "c11"] and "non-finite" in groups[2]["reason"]
    assert "contradicts family" in groups[1]["reason"]
    assert d["families"]["smallcnn"]["count"] == 3 and d["families"]["smallcnn"]["min_params"] == 4970
    arch = d["families"]["smallcnn"]["architectures"][0]
    assert arch["count"] == 3 and arch["layers"][0]["weight_shape"] == [16, 1, 3, 3]
    assert d["families"]["mlp"]["max_params"] == 8 * 4 + 8 + 3 * 8 + 3
    assert d["datasets"] == {"digits": 3, "shapes": 1}
    assert d["properties"]["test_accuracy"] == {"count": 4, "min": 0.2, "median": 0.5, "max": 0.9}
    json.dumps(d)  # the --json output is this dict

    text = format_summary(d)
    assert "7 listed: 4 accepted, 3 rejected" in text
    assert "smallcnn: 3 checkpoints, 4970 params" in text and "shapes: 1" in text


def test_reason_group_ignores_numbers_but_not_words():
    assert reason_group("layer 0 (conv2d_1): 3 non-finite weight value(s)") == reason_group(
        "layer 2 (conv2d_1): 17 non-finite weight value(s)"
    )
    assert reason_group("missing property 'test_accuracy'") != reason_group("missing property 'frequency'")


def test_inspect_job_prints_and_writes_json_and_fails_in_one_line(tmp_path, run_job):
    zoo = tmp_path / "zoo"
    smallcnnzoo.write_zoo(str(zoo), [make_checkpoint(i) for i in range(3)])
    out = tmp_path / "out" / "summary.json"
    done = run_job("inspect_zoo.py", str(zoo), "--steps", "all", "--json", str(out), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "format     smallcnnzoo (steps=all)" in done.stdout
    summary = json.loads(out.read_text())
    assert {"accepted", "rejected", "families", "datasets"} <= set(summary)
    assert (
        summary["accepted"] == 3
        and summary["rejected"] == []
        and summary["families"]["smallcnn"]["count"] == 3
    )

    failed = run_job("inspect_zoo.py", str(tmp_path / "nowhere"), timeout=120)
    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines() == [
        f"error: no zoo at {tmp_path / 'nowhere'}: the path does not exist"
    ]
