import dataclasses
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.chunking import (
    CHUNK_RECORD_SCHEMA,
    PROPERTY_COLUMNS,
    SCHEMA_VERSION,
    checkpoint_from_record,
    chunk_checkpoint,
    records_table,
    unchunk_record,
)
from pipeline.probes import probe_columns
from pipeline.zoo.checkpoint import Checkpoint, Layer

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def _zoo_layers() -> list[Layer]:
    """Every layer kind, conv kernel sizes 1/3/5/7, with and without bias."""
    return [
        Layer("c1", "conv2d", _w(4, 3, 1, 1), _w(4)),
        Layer("c3", "conv2d", _w(5, 4, 3, 3), None),
        Layer("c5", "conv2d", _w(6, 5, 5, 5), _w(6)),
        Layer("c7", "conv2d", _w(3, 6, 7, 7), _w(3)),
        Layer("k1", "conv1d", _w(4, 3, 1), _w(4)),
        Layer("k5", "conv1d", _w(5, 4, 5), None),
        Layer("fc", "linear", _w(7, 5), _w(7)),
        Layer("out", "linear", _w(3, 7), None),
    ]


def _checkpoint(layers: list[Layer] | None = None) -> Checkpoint:
    return Checkpoint(
        id="ck-1",
        family="mixed",
        dataset="digits",
        layers=layers or _zoo_layers(),
        properties={"test_accuracy": 0.75, "train_accuracy": 0.9, "generalization_gap": 0.15},
        hyperparameters={"lr": 0.01, "optimizer": "adam", "dropout": None},
    )


def _via_parquet(record: dict) -> dict:
    """The record as a reader gets it back: through Arrow and Parquet, as numpy arrays."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([record], schema=CHUNK_RECORD_SCHEMA), buf)
    buf.seek(0)
    table = pq.read_table(buf)
    return {name: table.column(name).to_numpy(zero_copy_only=False)[0] for name in table.column_names}


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint32)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 7, 16, 64])
@pytest.mark.parametrize("through_parquet", [False, True])
def test_round_trip_is_bit_exact_for_every_kind_and_kernel_size(chunk_size, through_parquet):
    checkpoint = _checkpoint()
    checkpoint.layers[0].weight[0, 0, 0, 0] = -0.0  # sign of zero survives
    record = chunk_checkpoint(checkpoint, chunk_size)
    if through_parquet:
        record = _via_parquet(record)
    state = unchunk_record(record)
    expected = checkpoint.state_dict()
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert state[key].dtype == np.float32 and state[key].shape == value.shape, key
        np.testing.assert_array_equal(_bits(state[key]), _bits(value), err_msg=key)


@pytest.mark.parametrize("chunk_size", [4, 5, 16])
def test_masks_count_real_elements_and_padding_is_zero(chunk_size):
    record = chunk_checkpoint(_checkpoint(), chunk_size)
    for i, layer in enumerate(_checkpoint().layers):
        elem = int(np.prod(layer.weight.shape[2:]))
        real = layer.weight.shape[0] * layer.weight.shape[1]
        mask = record["weight_mask"][i]
        assert record["layer_element_size"][i] == elem
        assert record["layer_fan_in"][i] == layer.weight.shape[1] * elem
        assert mask.size % chunk_size == 0 and mask.size - real < chunk_size
        assert mask.sum() == real and mask[:real].all()
        assert record["weight_chunks"][i].size == mask.size * elem
        assert not record["weight_chunks"][i][real * elem :].any()
        if layer.bias is None:
            assert record["bias_chunks"][i].size == 0 and record["bias_mask"][i].size == 0
        else:
            assert record["bias_mask"][i].sum() == layer.bias.size
            assert record["bias_mask"][i].size == -(-layer.bias.size // chunk_size) * chunk_size


def test_one_output_neurons_weights_sit_together():
    linear = _w(3, 10)
    conv = _w(2, 3, 5, 5)
    record = chunk_checkpoint(_checkpoint([Layer("c", "conv2d", conv), Layer("l", "linear", linear)]), 4)
    lin_chunks = record["weight_chunks"][1].reshape(-1, 4)  # (n_chunks, C) scalar elements
    np.testing.assert_array_equal(lin_chunks[0], linear[0, :4])  # chunk 0 starts with row 0
    np.testing.assert_array_equal(lin_chunks.reshape(-1)[:10], linear[0])  # row 0 is contiguous
    np.testing.assert_array_equal(lin_chunks.reshape(-1)[10:20], linear[1])
    conv_elems = record["weight_chunks"][0].reshape(-1, 25)  # one 5x5 kernel per element
    np.testing.assert_array_equal(conv_elems[0], conv[0, 0].ravel())
    np.testing.assert_array_equal(conv_elems[1], conv[0, 1].ravel())  # same output channel first
    np.testing.assert_array_equal(conv_elems[3], conv[1, 0].ravel())


def test_record_fields_and_schema():
    record = chunk_checkpoint(_checkpoint(), 8)
    table = pa.Table.from_pylist([record], schema=CHUNK_RECORD_SCHEMA)  # raises if a field does not fit
    assert table.schema.metadata[b"chunk_record_schema_version"] == str(SCHEMA_VERSION).encode()
    assert set(record) == set(CHUNK_RECORD_SCHEMA.names)
    assert record["schema_version"] == SCHEMA_VERSION and record["chunk_size"] == 8
    assert record["num_params"] == _checkpoint().num_params
    assert record["layer_kind"] == ["conv2d"] * 4 + ["conv1d"] * 2 + ["linear"] * 2
    assert record["layer_index"] == list(range(8))
    assert record["layer_element_size"] == [1, 9, 25, 49, 1, 5, 1, 1]
    assert record["test_accuracy"] == 0.75 and record["frequency"] is None
    assert json.loads(record["hyperparameters"])["optimizer"] == "adam"


def test_checkpoint_from_record_restores_metadata_through_parquet():
    original = _checkpoint()
    restored = checkpoint_from_record(_via_parquet(chunk_checkpoint(original, 5)))
    assert (restored.id, restored.family, restored.dataset) == ("ck-1", "mixed", "digits")
    assert restored.properties == original.properties  # absent properties stay absent (no NaN)
    assert restored.hyperparameters == original.hyperparameters
    assert [(layer.name, layer.kind) for layer in restored.layers] == [
        (x.name, x.kind) for x in original.layers
    ]
    assert set(PROPERTY_COLUMNS) >= set(restored.properties)


@pytest.mark.parametrize(
    ("layers", "chunk_size", "message"),
    [
        ([Layer("a", "linear", _w(2, 3))], 0, "chunk size"),
        ([Layer("a", "dense", _w(2, 3))], 4, "unknown layer kind"),
        ([Layer("a", "conv2d", _w(2, 3, 3))], 4, "4 dimensions"),
        ([Layer("a", "linear", _w(2, 3), _w(3))], 4, "bias shape"),
        ([Layer("a", "linear", _w(0, 3))], 4, "empty weight"),
    ],
)
def test_bad_input_is_a_specific_error(layers, chunk_size, message):
    with pytest.raises(ValueError, match=message):
        chunk_checkpoint(_checkpoint(layers), chunk_size)


def test_unchunk_rejects_inconsistent_masks_and_versions():
    record = chunk_checkpoint(_checkpoint(), 4)
    broken = dict(record, weight_mask=[m.copy() for m in record["weight_mask"]])
    broken["weight_mask"][2][0] = False
    with pytest.raises(ValueError, match="layer 'c5'"):
        unchunk_record(broken)
    with pytest.raises(ValueError, match="schema version"):
        unchunk_record(dict(record, schema_version=SCHEMA_VERSION + 1))


def test_no_field_but_the_property_columns_carries_a_target():
    """An INR is generated from its frequency and amplitude; a record must not hand them to a model through
    its hyperparameters. Checked on real generated networks of each kind."""
    from pipeline.generate import plan, train_checkpoint

    specs = plan("demo", count=2) + plan("inr", count=2)
    for spec in specs:
        for checkpoint in train_checkpoint(spec):
            record = chunk_checkpoint(checkpoint, 16)
            targets = {name: record[name] for name in PROPERTY_COLUMNS if record[name] is not None}
            assert targets, spec["id"]
            others = {k: v for k, v in record.items() if k not in PROPERTY_COLUMNS and k != "hyperparameters"}
            hyper = json.loads(record["hyperparameters"])
            assert not set(hyper) & set(PROPERTY_COLUMNS), hyper
            for name, value in targets.items():
                carried = [k for k, v in {**others, **hyper}.items() if isinstance(v, float) and v == value]
                assert not carried, f"{spec['id']}: {name} = {value} also in {carried}"


def test_run_column_defaults_to_the_id_and_survives_parquet():
    record = chunk_checkpoint(_checkpoint(), 8)
    assert record["run"] == "ck-1"
    stepped = dataclasses.replace(_checkpoint(), id="r7/step20", run="r7")
    assert checkpoint_from_record(_via_parquet(chunk_checkpoint(stepped, 8))).run_id == "r7"


def test_records_table_is_the_table_from_pylist_builds():
    """Prepare builds its Arrow tables column by column for speed; the result is the row-wise table exactly
    (values, nulls, types, schema metadata), for really trained, probed networks of three families and a
    row that lacks keys."""
    from pipeline.generate import plan, train_checkpoint

    networks = [c for spec in plan("tiny", 0, count=3) for c in train_checkpoint(spec)]
    rows = [chunk_checkpoint(c, 16) | probe_columns(c) for c in networks]
    assert all(r["probe"] is not None for r in rows)
    bare = dict(rows[0])
    for key in ("probe", "probe_probabilities", "test_accuracy", "hyperparameters"):
        del bare[key]
    rows.append(bare)
    built = records_table(rows)
    assert built.equals(pa.Table.from_pylist(rows, schema=CHUNK_RECORD_SCHEMA), check_metadata=True)
    assert built.column("probe").null_count == 1 and built.num_rows == 4
