import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.baselines import LAYER_SUMMARY, LINK_SUMMARY, layer_summary, link_summaries
from pipeline.chunking import CHUNK_RECORD_SCHEMA, chunk_checkpoint, unchunk_record
from pipeline.collate import collate_chunk_records, records_from_batch
from pipeline.zoo.checkpoint import LAYER_KINDS, Checkpoint, Layer

RNG = np.random.default_rng(1)


def _w(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def _records(chunk_size: int = 4) -> list[dict]:
    checkpoints = [
        Checkpoint(
            "mlp", "mlp", "digits", [Layer("0", "linear", _w(6, 5), _w(6)), Layer("1", "linear", _w(3, 6))]
        ),
        Checkpoint(
            "cnn",
            "cnn",
            "shapes",
            [
                Layer("0", "conv2d", _w(4, 1, 3, 3), _w(4)),
                Layer("1", "conv2d", _w(5, 4, 5, 5), _w(5)),
                Layer("2", "linear", _w(2, 5), _w(2)),
            ],
        ),
        Checkpoint(
            "c1d",
            "c1d",
            "mnist1d",
            [Layer("0", "conv1d", _w(3, 2, 7)), Layer("1", "linear", _w(2, 3), _w(2))],
        ),
    ]
    for i, checkpoint in enumerate(checkpoints):
        checkpoint.properties = {"test_accuracy": 0.1 * (i + 1), "train_accuracy": 0.5}
    return [chunk_checkpoint(c, chunk_size) for c in checkpoints]


def _ray_style_columns(records: list[dict]) -> dict[str, np.ndarray]:
    """Columns as Ray Data hands them to map_batches/iter_batches with batch_format="numpy"."""
    table = pa.Table.from_pylist(records, schema=CHUNK_RECORD_SCHEMA)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def test_list_of_records_and_numpy_columns_give_the_same_batch():
    records = _records()
    from_list = collate_chunk_records(records)
    columns = _ray_style_columns(records)
    assert columns["weight_chunks"].dtype == object  # ragged, as Ray delivers it
    from_columns = collate_chunk_records(columns)
    assert from_list.keys() == from_columns.keys()
    for key, value in from_list.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == from_columns[key].dtype, key
            assert torch.equal(value, from_columns[key]), key
        else:
            assert value == from_columns[key], key
    assert len(records_from_batch(columns)) == 3


def test_packed_layout_shapes_and_contents():
    records = _records(chunk_size=4)
    batch = collate_chunk_records(records, normalize="none")
    # Layers: mlp 2, cnn 3, c1d 2; weight chunks per layer = ceil(out*in / 4).
    chunks_per_layer = [8, 5, 1, 5, 3, 2, 2]
    assert batch["weight_chunks"].shape == (sum(chunks_per_layer), 4, 25)  # E = 5x5, the largest element
    assert batch["weight_mask"].shape == (sum(chunks_per_layer), 4)
    assert torch.equal(
        batch["weight_layer"], torch.repeat_interleave(torch.arange(7), torch.tensor(chunks_per_layer))
    )
    assert batch["layer_checkpoint"].tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert batch["layer_depth"].tolist() == [0, 1, 0, 1, 2, 0, 1]
    assert batch["layer_element_size"].tolist() == [1, 1, 9, 25, 1, 7, 1]
    assert batch["layer_kind"].tolist() == [
        LAYER_KINDS.index(k) for k in ["linear"] * 2 + ["conv2d"] * 2 + ["linear", "conv1d", "linear"]
    ]
    assert batch["weight_mask"].sum().item() == 30 + 18 + 4 + 20 + 10 + 6 + 6
    # A 3x3 kernel sits in the first 9 of 25 entries; the rest is zero.
    first_cnn_chunk = batch["weight_chunks"][batch["weight_layer"] == 2][0]
    np.testing.assert_array_equal(first_cnn_chunk[0, :9].numpy(), records[1]["weight_chunks"][0][:9])
    assert not first_cnn_chunk[:, 9:].any()
    # Biases: mlp layer 0 (6 -> 2 chunks), cnn all three (1 + 2 + 1), c1d layer 1 (1); none elsewhere.
    assert batch["bias_layer"].tolist() == [0, 0, 2, 3, 3, 4, 6]
    assert batch["bias_chunks"].shape == (7, 4, 1)
    assert batch["target"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert batch["ids"] == ["mlp", "cnn", "c1d"] and batch["datasets"] == ["digits", "shapes", "mnist1d"]


def test_fan_in_normalisation_scales_each_layer_by_sqrt_fan_in():
    records = _records()
    raw = collate_chunk_records(records, normalize="none")
    scaled = collate_chunk_records(records)  # fan_in is the default
    fan_in = raw["layer_fan_in"]
    assert fan_in.tolist() == [5, 6, 9, 100, 5, 14, 3]
    for what in ("weight", "bias"):
        factor = fan_in.sqrt()[raw[f"{what}_layer"]][:, None, None]
        torch.testing.assert_close(scaled[f"{what}_chunks"], raw[f"{what}_chunks"] * factor)
    with pytest.raises(ValueError, match="normalize"):
        collate_chunk_records(records, normalize="std")


def test_layer_summary_sees_each_layer_unit_by_unit():
    records = _records()
    batch = collate_chunk_records(records, layer_summaries=True)  # fan-in normalised
    summary = batch["layer_summary"]
    assert summary.shape == (7, LAYER_SUMMARY) and summary.dtype == torch.float32
    # cnn layer 1: weight (5, 4, 5, 5) with fan-in 100, bias (5,): unchunked, its rows are output channels.
    cnn = unchunk_record(records[1])
    expected = layer_summary(cnn["1.weight"] * 10.0, cnn["1.bias"] * 10.0)
    np.testing.assert_allclose(summary[3].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_layer_links_chain_each_checkpoints_raw_weights():
    records = _records()
    plain = collate_chunk_records(records)  # only on request: they are most of collate's time
    assert "layer_links" not in plain and "layer_summary" not in plain
    links = collate_chunk_records(records, layer_summaries=True)["layer_links"]  # of the raw weights
    assert links.shape == (7, LINK_SUMMARY) and links.dtype == torch.float32
    cnn = unchunk_record(records[1])
    expected = link_summaries([cnn["0.weight"], cnn["1.weight"], cnn["2.weight"]])
    np.testing.assert_allclose(links[2:5].numpy(), np.stack(expected), rtol=1e-4, atol=1e-4)


def test_target_choice_and_missing_targets():
    records = _records()
    assert collate_chunk_records(records, property_name="train_accuracy")["target"].tolist() == [0.5] * 3
    assert "target" not in collate_chunk_records(records, property_name=None)
    with pytest.raises(ValueError, match=r"'mlp'.*frequency"):
        collate_chunk_records(records, property_name="frequency")  # None in a record
    columns = _ray_style_columns(records)
    assert math.isnan(columns["frequency"][0])  # Ray/Arrow turn None into NaN
    with pytest.raises(ValueError, match=r"'mlp'.*frequency"):
        collate_chunk_records(columns, property_name="frequency")


def test_inconsistent_batches_are_rejected():
    with pytest.raises(ValueError, match="one chunk size"):
        collate_chunk_records(_records(4)[:2] + _records(8)[:1])
    with pytest.raises(ValueError, match="empty"):
        collate_chunk_records([])
