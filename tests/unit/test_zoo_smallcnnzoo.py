"""The Small CNN Zoo layout: Keras → PyTorch conversion, row-range reads, steps, and bad inputs."""

from __future__ import annotations

import gzip
import io
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pipeline.zoo import Checkpoint, Layer, Rejection, ZooError, open_zoo, read_part, smallcnnzoo

# layout.csv of the published zoo, verbatim (REFERENCE.md).
PUBLISHED_LAYOUT = """varname,start_idx,end_idx,size,shape
sequential/conv2d/bias:0,0,16,16,"(16,)"
sequential/conv2d/kernel:0,16,160,144,"(3, 3, 1, 16)"
sequential/conv2d_1/bias:0,160,176,16,"(16,)"
sequential/conv2d_1/kernel:0,176,2480,2304,"(3, 3, 16, 16)"
sequential/conv2d_2/bias:0,2480,2496,16,"(16,)"
sequential/conv2d_2/kernel:0,2496,4800,2304,"(3, 3, 16, 16)"
sequential/dense/bias:0,4800,4810,10,"(10,)"
sequential/dense/kernel:0,4810,4970,160,"(16, 10)"
"""
SMALLCNN = [
    ("conv2d", (16, 1, 3, 3)),
    ("conv2d", (16, 16, 3, 3)),
    ("conv2d", (16, 16, 3, 3)),
    ("linear", (10, 16)),
]
KERAS_NAMES = ["conv2d", "conv2d_1", "conv2d_2", "dense"]


def make_checkpoint(i: int, step: int = 86, modeldir: str | None = None, dataset="digits", shapes=SMALLCNN):
    rng = np.random.default_rng(i)
    layers = [
        Layer(
            name,
            kind,
            rng.normal(size=shape).astype(np.float32),
            rng.normal(size=shape[0]).astype(np.float32),
        )
        for name, (kind, shape) in zip(KERAS_NAMES, shapes, strict=False)
    ]
    properties = {"test_accuracy": 0.3 + i / 100, "train_accuracy": 0.5, "test_loss": 1.5, "train_loss": 1.0}
    hyper = {"learning_rate": 0.01, "optimizer": "adam", "step": step, "modeldir": modeldir or f"run{i}"}
    return Checkpoint(f"ckpt-{i}", "smallcnn", dataset, layers, properties, hyper)


def read_all(uri: str, **options):
    listing = open_zoo(uri, **options)
    items = [item for part in listing.parts for item in read_part(json.loads(json.dumps(part)))]
    accepted = [x for x in items if isinstance(x, Checkpoint)]
    rejected = [x for x in items if isinstance(x, Rejection)]
    assert len(accepted) + len(rejected) == listing.num_listed
    return accepted, rejected, listing


def test_writer_produces_the_published_layout_and_reads_back_bit_exact(tmp_path):
    zoo = tmp_path / "digits"
    written = [make_checkpoint(i) for i in range(5)]
    smallcnnzoo.write_zoo(str(zoo), written)

    assert (zoo / "layout.csv").read_text() == PUBLISHED_LAYOUT
    weights = np.load(zoo / "weights.npy")
    assert weights.shape == (5, 4970) and weights.dtype == np.float32
    # Row layout: bias then kernel in Keras order, e.g. the dense kernel (in, out) at 4810.
    assert np.array_equal(weights[1, 4810:4970].reshape(16, 10), written[1].layers[3].weight.T)
    metrics = pd.read_csv(zoo / "metrics.csv.gz")
    assert metrics.columns[0].startswith("Unnamed")  # the unnamed index column of the public files
    assert list(metrics.columns[1:]) == [
        "config.dataset",
        "config.learning_rate",
        "config.optimizer",
        "modeldir",
        "step",
        "test_accuracy",
        "test_loss",
        "train_accuracy",
        "train_loss",
    ]

    accepted, rejected, listing = read_all(str(zoo))
    assert listing.format == "smallcnnzoo" and not rejected
    assert [c.id for c in accepted] == [f"digits/run{i}/step86" for i in range(5)]
    for got, want in zip(accepted, written, strict=True):
        assert got.family == "smallcnn" and got.dataset == "digits"
        assert [(layer.name, layer.kind) for layer in got.layers] == [
            (n, k) for n, (k, _) in zip(KERAS_NAMES, SMALLCNN, strict=True)
        ]
        for a, b in zip(got.layers, want.layers, strict=True):
            assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        assert got.properties == pytest.approx(
            {**want.properties, "generalization_gap": 0.5 - want.properties["test_accuracy"]}
        )
        assert got.hyperparameters == {
            "learning_rate": 0.01,
            "optimizer": "adam",
            "modeldir": want.hyperparameters["modeldir"],
            "step": 86,
        }


def _write_published_folder(folder, rows: np.ndarray, metrics: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "layout.csv").write_text(PUBLISHED_LAYOUT)
    np.save(folder / "weights.npy", rows.astype(np.float32))
    (folder / "metrics.csv.gz").write_bytes(gzip.compress(metrics.to_csv().encode()))


def _metrics(n: int, dataset="mnist", steps=None) -> pd.DataFrame:
    steps = steps or [86] * n
    return pd.DataFrame(
        {
            "config.dataset": [dataset] * n,
            "config.dropout": [0.1] * n,
            "modeldir": [f"m{i}" for i in range(n)],
            "step": steps,
            "test_accuracy": np.linspace(0.1, 0.9, n),
            "test_loss": [1.0] * n,
            "train_accuracy": [0.95] * n,
            "train_loss": [0.2] * n,
        }
    )


def test_keras_indices_map_to_pytorch_layout_explicitly(tmp_path):
    # Column index as value: every converted element names the column it came from.
    _write_published_folder(tmp_path / "mnist", np.arange(4970, dtype=np.float32)[None, :], _metrics(1))
    (ckpt,), _, _ = read_all(str(tmp_path / "mnist"))
    conv0, conv1, _, dense = ckpt.layers
    # conv2d kernel (kh, kw, in, out) flattened C-order from column 16: index ((kh*3 + kw)*in_ch + i)*16 + o.
    for o, i, kh, kw in [(0, 0, 0, 0), (5, 0, 2, 1), (15, 0, 1, 2)]:
        assert conv0.weight[o, i, kh, kw] == 16 + ((kh * 3 + kw) * 1 + i) * 16 + o
    for o, i, kh, kw in [(3, 7, 0, 2), (15, 15, 2, 2)]:
        assert conv1.weight[o, i, kh, kw] == 176 + ((kh * 3 + kw) * 16 + i) * 16 + o
    assert np.array_equal(conv0.bias, np.arange(16))
    assert dense.weight.shape == (10, 16) and dense.weight[4, 9] == 4810 + 9 * 10 + 4
    assert np.array_equal(dense.bias, np.arange(4800, 4810))


def test_converted_kernel_computes_the_same_convolution_as_keras_order():
    rng = np.random.default_rng(0)
    keras_kernel = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)  # (kh, kw, in, out)
    bias = rng.normal(size=4).astype(np.float32)
    x = rng.normal(size=(1, 7, 7, 2)).astype(np.float32)  # NHWC, as Keras computes
    # Keras 'valid' stride-2 convolution written out in numpy.
    expected = np.zeros((1, 3, 3, 4), dtype=np.float32)
    for r in range(3):
        for c in range(3):
            patch = x[0, 2 * r : 2 * r + 3, 2 * c : 2 * c + 3, :]
            expected[0, r, c] = np.einsum("hwi,hwio->o", patch, keras_kernel) + bias
    weight = smallcnnzoo.keras_to_torch("conv2d", keras_kernel)
    got = F.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(weight), torch.from_numpy(bias), stride=2
    )
    assert np.allclose(got.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)
    dense = rng.normal(size=(16, 10)).astype(np.float32)  # (in, out)
    v = rng.normal(size=16).astype(np.float32)
    assert np.allclose(smallcnnzoo.keras_to_torch("linear", dense) @ v, v @ dense, atol=1e-5)
    assert np.array_equal(smallcnnzoo.torch_to_keras("conv2d", weight), keras_kernel)


def test_steps_final_keeps_step_86_and_all_keeps_every_row(tmp_path):
    written = [
        make_checkpoint(10 * run + k, step=step, modeldir=f"run{run}")
        for run in range(3)
        for k, step in enumerate((0, 20, 86))
    ]
    smallcnnzoo.write_zoo(str(tmp_path / "z"), written)
    final, _, listing = read_all(str(tmp_path / "z"))
    assert listing.options == {"steps": "final"}
    assert [c.id for c in final] == [f"digits/run{r}/step86" for r in range(3)]
    everything, _, listing_all = read_all(str(tmp_path / "z"), steps="all")
    assert len(everything) == 9 and everything[1].id == "digits/run0/step20"
    assert listing_all.fingerprint != listing.fingerprint
    # The steps of one run share its run, so a split keeps them on one side.
    assert [c.run_id for c in everything] == [f"digits/run{r}" for r in range(3) for _ in range(3)]


def test_row_range_parts_read_the_right_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(smallcnnzoo, "PART_BYTES", 3 * 4970 * 4)  # three rows per part
    written = [make_checkpoint(i) for i in range(8)]
    smallcnnzoo.write_zoo(str(tmp_path / "z"), written)
    accepted, _, listing = read_all(str(tmp_path / "z"))
    assert [p["rows"] for p in listing.parts] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    for got, want in zip(accepted, written, strict=True):
        assert np.array_equal(got.layers[1].weight, want.layers[1].weight)


def test_truncated_weights_reject_rows_past_the_end(tmp_path):
    smallcnnzoo.write_zoo(str(tmp_path / "z"), [make_checkpoint(i) for i in range(4)])
    path = tmp_path / "z" / "weights.npy"
    path.write_bytes(path.read_bytes()[: -4970 * 4 - 100])  # row 3 gone, row 2 cut short
    accepted, rejected, _ = read_all(str(tmp_path / "z"))
    assert [c.id for c in accepted] == ["digits/run0/step86", "digits/run1/step86"]
    assert [r.id for r in rejected] == ["digits/run2/step86", "digits/run3/step86"]
    assert all("truncated" in r.reason for r in rejected)


def test_bad_rows_are_rejected_with_reasons(tmp_path):
    rows = np.random.default_rng(0).normal(size=(4, 4970))
    rows[1, 3000] = np.inf
    metrics = _metrics(4)
    metrics.loc[2, "test_accuracy"] = np.nan  # a missing property
    _write_published_folder(tmp_path / "mnist", rows, metrics)
    accepted, rejected, _ = read_all(str(tmp_path / "mnist"))
    assert [c.id for c in accepted] == ["mnist/m0/step86", "mnist/m3/step86"]
    reasons = {r.id: r.reason for r in rejected}
    assert "non-finite" in reasons["mnist/m1/step86"]
    assert "missing property 'test_accuracy'" in reasons["mnist/m2/step86"]


def test_inconsistent_zoo_files_raise_zoo_error(tmp_path):
    folder = tmp_path / "mnist"
    _write_published_folder(folder, np.zeros((2, 4970)), _metrics(2))
    (folder / "layout.csv").write_text(PUBLISHED_LAYOUT.replace("4810,10,", "4810,11,"))
    with pytest.raises(ZooError, match="parameter count contradicts itself"):
        open_zoo(str(folder))
    _write_published_folder(folder, np.zeros((2, 4971)), _metrics(2))
    with pytest.raises(ZooError, match="4971 columns but layout.csv ends at column 4970"):
        open_zoo(str(folder))
    _write_published_folder(folder, np.zeros((3, 4970)), _metrics(2))
    with pytest.raises(ZooError, match="3 rows but metrics.csv.gz has 2"):
        open_zoo(str(folder))
    (folder / "metrics.csv.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ZooError, match="metrics.csv.gz: unreadable"):
        open_zoo(str(folder))
    os.remove(folder / "metrics.csv.gz")
    with pytest.raises(ZooError, match="missing metrics.csv.gz"):
        open_zoo(str(folder))


def test_weights_deleted_after_listing_rejects_each_row(tmp_path):
    smallcnnzoo.write_zoo(str(tmp_path / "z"), [make_checkpoint(i) for i in range(3)])
    listing = open_zoo(str(tmp_path / "z"))
    os.remove(tmp_path / "z" / "weights.npy")
    items = [x for p in listing.parts for x in read_part(p)]
    assert len(items) == 3 and all(isinstance(x, Rejection) and "missing" in x.reason for x in items)


def test_parent_folder_of_datasets_and_duplicate_ids(tmp_path):
    _write_published_folder(tmp_path / "zoo" / "mnist", np.zeros((3, 4970)), _metrics(3, "mnist"))
    _write_published_folder(tmp_path / "zoo" / "cifar10", np.ones((3, 4970)), _metrics(3, "cifar10"))
    (tmp_path / "zoo" / "notes").mkdir()  # an unrelated folder is not a dataset
    accepted, rejected, listing = read_all(str(tmp_path / "zoo"))
    assert listing.format == "smallcnnzoo" and not rejected
    assert sorted({c.dataset for c in accepted}) == ["cifar10", "mnist"]
    assert accepted[0].id == "cifar10/m0/step86" and accepted[0].layers[0].weight[0, 0, 0, 0] == 1.0

    _write_published_folder(tmp_path / "zoo" / "mnist_copy", np.zeros((3, 4970)), _metrics(3, "mnist"))
    accepted, rejected, _ = read_all(str(tmp_path / "zoo"))
    assert len(accepted) == 6 and [r.id for r in rejected] == [f"mnist/m{i}/step86" for i in range(3)]
    assert all("duplicate id" in r.reason and "/mnist row" in r.reason for r in rejected)


def test_variant_architecture_family_and_one_architecture_per_folder(tmp_path):
    variant = [("conv2d", (8, 1, 3, 3)), ("linear", (10, 8))]
    written = [make_checkpoint(i, shapes=variant) for i in range(2)]
    for c in written:
        c.family = "smallcnn-variant"
    smallcnnzoo.write_zoo(str(tmp_path / "v"), written)
    accepted, _, _ = read_all(str(tmp_path / "v"))
    assert [c.family for c in accepted] == ["smallcnn-variant"] * 2
    with pytest.raises(ZooError, match="one architecture"):
        smallcnnzoo.write_zoo(str(tmp_path / "mixed"), [make_checkpoint(0), written[0]])
    with pytest.raises(ZooError, match="no checkpoints"):
        smallcnnzoo.write_zoo(str(tmp_path / "none"), [])


def test_npy_header_is_parsed_without_loading_the_matrix(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros((5, 7), dtype=np.float64))
    (tmp_path / "w.npy").write_bytes(buf.getvalue())
    header = smallcnnzoo.read_npy_header(str(tmp_path / "w.npy"))
    assert header["rows"] == 5 and header["cols"] == 7 and header["dtype"] == "<f8"
    assert header["offset"] == len(buf.getvalue()) - 5 * 7 * 8


def test_fingerprint_follows_metrics_changes(tmp_path):
    smallcnnzoo.write_zoo(str(tmp_path / "z"), [make_checkpoint(i) for i in range(3)])
    first = open_zoo(str(tmp_path / "z")).fingerprint
    assert open_zoo(str(tmp_path / "z")).fingerprint == first
    smallcnnzoo.write_zoo(str(tmp_path / "z"), [make_checkpoint(i) for i in range(4)])
    assert open_zoo(str(tmp_path / "z")).fingerprint != first


def test_a_dataset_folder_reached_through_a_link_out_of_the_zoo_is_refused_unread(tmp_path):
    _write_published_folder(tmp_path / "zoo" / "mnist", np.zeros((3, 4970)), _metrics(3, "mnist"))
    _write_published_folder(tmp_path / "elsewhere" / "cifar10", np.ones((3, 4970)), _metrics(3, "cifar10"))
    (tmp_path / "zoo" / "cifar10").symlink_to(tmp_path / "elsewhere" / "cifar10")
    with pytest.raises(
        ZooError, match=r"zoo: cifar10 is a symbolic link to .*elsewhere.*outside the zoo: not read"
    ):
        open_zoo(str(tmp_path / "zoo"), "smallcnnzoo")
    # A zoo that is itself a link is read where it leads.
    (tmp_path / "zoo" / "cifar10").unlink()
    (tmp_path / "linked-zoo").symlink_to(tmp_path / "zoo")
    accepted, rejected, _ = read_all(str(tmp_path / "linked-zoo"))
    assert len(accepted) == 3 and not rejected
