"""The side-input table is the one place a network input is declared: its record column, its width, the run
switch that turns it on. Collate, the encoder and prepare must follow it."""

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.chunking import CHUNK_RECORD_SCHEMA, chunk_checkpoint
from pipeline.collate import collate_chunk_records
from pipeline.config import TrainConfig
from pipeline.encoder import SNE
from pipeline.side_inputs import INPUT_WIDTHS, NETWORK_INPUTS, network_inputs, reads_probes
from pipeline.train import encoder_config
from pipeline.zoo.checkpoint import Checkpoint, Layer

pytestmark = pytest.mark.usefixtures("one_thread")


def _records() -> list[dict]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(2):
        layers = [Layer("0", "linear", rng.normal(size=(5, 3)).astype(np.float32), np.zeros(5, np.float32))]
        records.append(
            chunk_checkpoint(Checkpoint(f"n{i}", "mlp", "digits", layers, {"test_accuracy": 0.5}), 4)
        )
    return records


def test_every_network_input_is_a_record_column_a_run_switch_and_a_batch_key():
    switches = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    records = _records()
    records[1] |= {entry.key: [0.25] * entry.width for entry in NETWORK_INPUTS}
    batch = collate_chunk_records(records)
    for entry in NETWORK_INPUTS:
        assert entry.key in CHUNK_RECORD_SCHEMA.names or entry.key == "peer"  # peer: attached at the split
        assert switches[entry.switch] in (bool, "bool")
        assert INPUT_WIDTHS[entry.key] == entry.width
        assert batch[entry.key].shape == (2, entry.width)
        assert batch[f"{entry.key}_present"].tolist() == [0.0, 1.0]
        assert batch[entry.key][1].tolist() == [0.25] * entry.width


def test_a_runs_switches_choose_the_encoders_network_inputs_in_table_order():
    every = {entry.switch: True for entry in NETWORK_INPUTS}
    none = {entry.switch: False for entry in NETWORK_INPUTS}
    assert network_inputs(TrainConfig(**every)) == tuple(entry.key for entry in NETWORK_INPUTS)
    assert network_inputs(TrainConfig(**none)) == ()
    assert TrainConfig(**every).reads_probes() and not TrainConfig(**none).reads_probes()
    assert reads_probes(("peer",)) and not reads_probes(())
    encoder = SNE(dataclasses.replace(encoder_config(TrainConfig(**every)), chunk_micro_batch=64))
    assert list(encoder.network_inputs) == [entry.key for entry in NETWORK_INPUTS]
    with torch.no_grad():
        assert encoder.eval()(collate_chunk_records(_records(), layer_summaries=True)).shape == (2,)
