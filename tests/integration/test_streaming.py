"""Training streams its splits from the chunk records: nothing is held whole, each epoch sees every training
network once in a fresh order that a seed reproduces, what is fitted on the training networks comes
from one streaming pass equal to a full read, and scoring runs in parallel tasks with the driver's result."""

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.config import debug, from_dict
from pipeline.data import read_record_index, record_files
from pipeline.driver import (
    fit_peer_consensus,
    prepare_records,
    score_records,
    split_datasets,
    split_records,
)
from pipeline.probes import PEER_FEATURES, PeerConsensus, probabilities_of
from pipeline.split_reads import probe_rows
from pipeline.train import TargetScaler, build_encoder, predict_records, shard_epoch

pytestmark = pytest.mark.integration


def _records_and_split(bucket):
    config = from_dict({"zoo": f"{bucket}/zoo", "storage": f"{bucket}/runs", "batch_size": 8}, debug())
    records = prepare_records(config).output
    assignment, _ = split_records(config, records)
    return config, records, assignment


def test_a_streamed_epoch_sees_every_training_network_once_in_a_fresh_order_a_seed_repeats(tiny_zoo):
    config, records, assignment = _records_and_split(tiny_zoo)
    train_ids = sorted(i for i, s in assignment.items() if s == "train")

    def epoch_orders(seed: int, epochs: int = 3) -> list[list[str]]:
        train = split_datasets(records, assignment, shuffle_seed=seed)["train"]
        shard = train.streaming_split(1, equal=True)[0]  # what a Ray Train worker iterates, epoch after epoch
        seeded = dataclasses.replace(config, seed=seed)
        return [
            [str(r["id"]) for batch in shard_epoch(shard, seeded, epoch, rank=0) for r in batch]
            for epoch in range(epochs)
        ]

    orders = epoch_orders(seed=0)
    for order in orders:
        assert sorted(order) == train_ids  # each training network exactly once, nothing from val or test
    assert orders[0] != orders[1] and orders[1] != orders[2]  # a fresh order every epoch
    assert epoch_orders(seed=0) == orders  # and the same sequence of orders for the same seed
    assert epoch_orders(seed=1)[0] != orders[0]


def test_statistics_from_the_streaming_pass_equal_those_from_a_full_read(tiny_zoo):
    _, records, assignment = _records_and_split(tiny_zoo)
    train_ids = [i for i, s in assignment.items() if s == "train"]

    peers = fit_peer_consensus(records, train_ids)
    everything = probe_rows(read_record_index(records, ("id", "dataset", "probe_probabilities")))
    in_train = [r for r in everything if assignment[r["id"]] == "train"]
    full = PeerConsensus.fit(
        [r["id"] for r in in_train], [r["dataset"] for r in in_train], [probabilities_of(r) for r in in_train]
    )
    assert len(peers.members) > 10 and peers.members == full.members and peers.counts == full.counts
    for key, total in full.sums.items():
        np.testing.assert_allclose(peers.sums[key], total, rtol=1e-12)

    # The training split carries each network's agreement with the others, as the full read gives it.
    train = split_datasets(records, assignment, peers=peers)["train"]
    rows = train.take_all()
    assert sorted(r["id"] for r in rows) == sorted(train_ids)
    by_id = {r["id"]: r for r in in_train}
    attached = [r for r in rows if r["peer"] is not None]
    assert len(attached) > 10 and all(len(r["peer"]) == PEER_FEATURES for r in attached)
    for r in rows:
        expected = full.record_features(by_id[r["id"]])
        if expected is None:
            assert r["peer"] is None
        else:
            np.testing.assert_allclose(r["peer"], expected, rtol=1e-6)


def test_scoring_in_parallel_tasks_gives_what_one_process_gives_in_the_same_order(tiny_zoo):
    config, records, assignment = _records_and_split(tiny_zoo)
    torch.manual_seed(0)
    encoder, scaler = build_encoder(config), TargetScaler(0.6, 0.2)
    peers = fit_peer_consensus(records, [i for i, s in assignment.items() if s == "train"])
    test = split_datasets(records, assignment, peers=peers)["test"]

    test_ids = [i for i, s in assignment.items() if s == "test"]
    parallel = score_records(encoder, records, test_ids, config, scaler, peers=peers, tasks=2)
    # What the driver scored before: the test split as Ray Data streams it, in one process.
    in_process = predict_records(
        encoder, test.iter_batches(batch_size=64, batch_format="numpy"), config, scaler
    )

    assert len(parallel["id"]) == len(test_ids) > 10
    assert len(record_files(records)) > 2  # several tasks, whose results come back in file order
    for column in ("id", "family", "dataset", "target"):
        assert parallel[column] == in_process[column]
    np.testing.assert_allclose(parallel["prediction"], in_process["prediction"], rtol=1e-5, atol=1e-6)
    assert np.std(parallel["prediction"]) > 0  # networks told apart, not one constant
