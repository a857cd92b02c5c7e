import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.chunking import chunk_checkpoint
from pipeline.collate import collate_chunk_records
from pipeline.config import TrainConfig
from pipeline.encoder import SNE, DeepSets, EncoderConfig, build_set_encoder
from pipeline.evaluation import regression_metrics
from pipeline.probes import PROBE_FEATURES
from pipeline.side_inputs import INPUT_WIDTHS
from pipeline.train import RUN_ENCODER_FIELDS, encoder_config
from pipeline.zoo.checkpoint import LAYER_KINDS, Checkpoint, Layer

pytestmark = pytest.mark.usefixtures("one_thread")


# The encoder a run of the default config trains, made smaller and cheaper.
DEFAULT = encoder_config(TrainConfig())
SMALL = dataclasses.replace(
    DEFAULT, hidden=32, heads=4, inducing_points=4, head_hidden=32, chunk_micro_batch=64
)


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)


def _mixed_checkpoints(seed: int = 0) -> list[Checkpoint]:
    """An MLP, a conv net with kernels 1/3/5/7, and a conv1d net: one batch must hold all three."""
    rng = np.random.default_rng(seed)
    mlp = [
        Layer("0", "linear", _w(rng, 12, 6), _w(rng, 12)),
        Layer("1", "linear", _w(rng, 3, 12), _w(rng, 3)),
    ]
    cnn = [
        Layer("0", "conv2d", _w(rng, 4, 1, 7, 7), _w(rng, 4)),
        Layer("1", "conv2d", _w(rng, 5, 4, 5, 5)),
        Layer("2", "conv2d", _w(rng, 6, 5, 3, 3), _w(rng, 6)),
        Layer("3", "conv2d", _w(rng, 6, 6, 1, 1), _w(rng, 6)),
        Layer("4", "linear", _w(rng, 10, 6), _w(rng, 10)),
    ]
    c1d = [Layer("0", "conv1d", _w(rng, 5, 2, 5), _w(rng, 5)), Layer("1", "linear", _w(rng, 4, 5), None)]
    return [
        Checkpoint(name, name, "digits", layers, {"test_accuracy": acc})
        for name, layers, acc in (("mlp", mlp, 0.2), ("cnn", cnn, 0.5), ("c1d", c1d, 0.8))
    ]


def _batch(checkpoints: list[Checkpoint], chunk_size: int = 4, layer_summaries: bool = True) -> dict:
    records = [chunk_checkpoint(c, chunk_size) for c in checkpoints]
    return collate_chunk_records(records, layer_summaries=layer_summaries)


def _encoder(cfg: EncoderConfig = SMALL, seed: int = 0) -> SNE:
    torch.manual_seed(seed)
    return SNE(cfg).eval()


def _embed(encoder: SNE, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return encoder.embed(batch)


def test_mixed_batch_shapes():
    batch = _batch(_mixed_checkpoints())
    encoder = _encoder()
    with torch.no_grad():
        pred = encoder(batch)
    assert pred.shape == (3,) and torch.isfinite(pred).all()
    assert _embed(encoder, batch).shape == (3, SMALL.hidden)


def test_default_encoder_runs():
    encoder = _encoder(DEFAULT)
    with torch.no_grad():
        assert encoder(_batch(_mixed_checkpoints(), 16)).shape == (3,)


def test_a_run_chooses_the_encoders_settings_in_one_place():
    """EncoderConfig has no defaults of its own for what a run chooses: each comes from TrainConfig."""
    import pipeline.config

    assert {"hidden", "blocks", "layer_statistics"} <= set(RUN_ENCODER_FIELDS)
    without_default = {
        f.name
        for f in dataclasses.fields(EncoderConfig)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert without_default == set(RUN_ENCODER_FIELDS)
    paper = encoder_config(pipeline.config.paper())
    for name in RUN_ENCODER_FIELDS:
        assert getattr(paper, name) == getattr(pipeline.config.paper(), name)
    with pytest.raises(TypeError, match="hidden"):
        EncoderConfig(heads=4)


def test_a_checkpoint_is_encoded_the_same_alone_or_in_a_mixed_batch():
    checkpoints = _mixed_checkpoints()
    encoder = _encoder()
    together = _embed(encoder, _batch(checkpoints))
    for i, checkpoint in enumerate(checkpoints):  # alone, the element size E of the batch differs
        torch.testing.assert_close(
            _embed(encoder, _batch([checkpoint]))[0], together[i], atol=1e-5, rtol=1e-5
        )


def _append_chunks(batch: dict, prefix: str, layers: list[int], chunks: torch.Tensor) -> None:
    batch[f"{prefix}_chunks"] = torch.cat([batch[f"{prefix}_chunks"], chunks])
    batch[f"{prefix}_mask"] = torch.cat(
        [batch[f"{prefix}_mask"], torch.zeros(chunks.shape[:2], dtype=torch.bool)]
    )
    batch[f"{prefix}_layer"] = torch.cat([batch[f"{prefix}_layer"], torch.tensor(layers)])


def test_padded_chunks_change_nothing():
    batch = _batch(_mixed_checkpoints())
    encoder = _encoder()
    before = _embed(encoder, batch)
    _, c, e = batch["weight_chunks"].shape
    _append_chunks(batch, "weight", [0, 3, 3, 7], torch.randn(4, c, e) * 10)  # random values under the mask
    _append_chunks(batch, "bias", [1, 4], torch.randn(2, c, 1) * 10)  # layer 4 of the cnn has no bias
    torch.testing.assert_close(_embed(encoder, batch), before, atol=1e-5, rtol=1e-5)


def test_padded_layers_change_nothing():
    batch = _batch(_mixed_checkpoints())
    encoder = _encoder()
    before = _embed(encoder, batch)
    lt = batch["layer_kind"].shape[0]
    # Two empty layers for the cnn (one with padded chunks, one with none) and one for the mlp.
    extra = {"layer_kind": [2, 0, 1], "layer_depth": [5, 9, 2], "layer_element_size": [9, 1, 3]}
    extra |= {"layer_fan_in": [9.0, 4.0, 6.0], "layer_checkpoint": [1, 1, 0]}
    for summary in ("layer_summary", "layer_links"):
        extra[summary] = (torch.randn(3, batch[summary].shape[1]) * 10).tolist()
    for key, values in extra.items():
        batch[key] = torch.cat([batch[key], torch.tensor(values, dtype=batch[key].dtype)])
    _, c, e = batch["weight_chunks"].shape
    _append_chunks(batch, "weight", [lt, lt, lt + 2], torch.randn(3, c, e))
    _append_chunks(batch, "bias", [lt + 1], torch.randn(1, c, 1))
    after = _embed(encoder, batch)
    assert torch.isfinite(after).all()
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_embedding_is_invariant_to_chunk_order_within_layers():
    batch = _batch(_mixed_checkpoints())
    encoder = _encoder()
    before = _embed(encoder, batch)
    generator = torch.Generator().manual_seed(0)
    for prefix in ("weight", "bias"):
        order = torch.randperm(batch[f"{prefix}_layer"].shape[0], generator=generator)
        for key in ("chunks", "mask", "layer"):
            batch[f"{prefix}_{key}"] = batch[f"{prefix}_{key}"][order]
    torch.testing.assert_close(_embed(encoder, batch), before, atol=1e-5, rtol=1e-5)


def test_micro_batch_size_does_not_change_the_output():
    batch = _batch(_mixed_checkpoints(), chunk_size=2)
    reference = _embed(_encoder(dataclasses.replace(SMALL, chunk_micro_batch=100_000)), batch)
    for micro in (1, 7):
        out = _embed(_encoder(dataclasses.replace(SMALL, chunk_micro_batch=micro)), batch)
        torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_positional_encoding_switch():
    batch = _batch(_mixed_checkpoints())
    shuffled = dict(batch, layer_depth=batch["layer_depth"].flip(0))  # lie about every layer's depth
    with_pe = _encoder()
    assert not torch.allclose(_embed(with_pe, batch), _embed(with_pe, shuffled), atol=1e-4)
    without = _encoder(dataclasses.replace(SMALL, positional_encoding=False))
    out = _embed(without, batch)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(_embed(without, shuffled), out)  # depth is not seen at all


@pytest.mark.parametrize("blocks", ["paper", "compact"])
def test_without_the_hierarchy_a_network_is_one_set_of_chunks_whatever_their_layer(blocks):
    cfg = dataclasses.replace(
        SMALL, blocks=blocks, hierarchy=False, positional_encoding=False, layer_statistics=False
    )
    encoder = _encoder(cfg)
    assert encoder.network_pma is None and encoder.merge_sab is None and encoder.bias_layers is None
    checkpoints = _mixed_checkpoints()
    batch = _batch(checkpoints)
    out = _embed(encoder, batch)
    alone = torch.cat([_embed(encoder, _batch([c])) for c in checkpoints])
    torch.testing.assert_close(out, alone, rtol=1e-4, atol=1e-5)
    # Rows r1, r2 | r3 against r1 | r2, r3 (one chunk per row): the same chunks in other layers are the
    # same network without the hierarchy, and another one with it.
    rows = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    acc = {"test_accuracy": 0.5}
    split_a = Checkpoint(
        "a", "mlp", "digits", [Layer("0", "linear", rows[:2]), Layer("1", "linear", rows[2:])], acc
    )
    split_b = Checkpoint(
        "b", "mlp", "digits", [Layer("0", "linear", rows[:1]), Layer("1", "linear", rows[1:])], acc
    )
    torch.testing.assert_close(_embed(encoder, _batch([split_a])), _embed(encoder, _batch([split_b])))
    staged = _encoder(dataclasses.replace(cfg, hierarchy=True))
    assert not torch.allclose(_embed(staged, _batch([split_a])), _embed(staged, _batch([split_b])), atol=1e-4)
    encoder.train()
    encoder(batch).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())
    with pytest.raises(ValueError, match="layer_statistics=False"):
        dataclasses.replace(SMALL, hierarchy=False)


@pytest.mark.parametrize("key", ["layer_summary", "layer_links"])
def test_layer_statistics_switch(key):
    batch = _batch(_mixed_checkpoints())
    other = dict(batch, **{key: batch[key].flip(0)})  # swap the layers' summaries of one kind
    with_stats = _encoder(SMALL)
    assert not torch.allclose(_embed(with_stats, batch), _embed(with_stats, other), atol=1e-4)
    without = _encoder(dataclasses.replace(SMALL, layer_statistics=False))
    assert without.statistics is None
    torch.testing.assert_close(_embed(without, other), _embed(without, batch))  # the summaries are not read


def test_an_encoder_that_reads_layer_summaries_says_how_to_collate_them():
    batch = _batch(_mixed_checkpoints())
    del batch["layer_links"]
    with pytest.raises(KeyError, match=r"each layer's summary.*no layer_links.*layer_summaries=True"):
        _embed(_encoder(SMALL), batch)
    weights_only = _batch(_mixed_checkpoints(), layer_summaries=False)
    assert "layer_summary" not in weights_only and "layer_links" not in weights_only
    _embed(_encoder(dataclasses.replace(SMALL, layer_statistics=False)), weights_only)  # reads without them


def test_an_encoder_is_built_for_the_widths_of_what_it_reads_and_says_which_are_missing():
    """The encoder imports nothing that computes its side inputs: their widths come with its config."""
    with pytest.raises(
        ValueError, match=r"input_widths needs a positive width for layer_summary, layer_links, probe"
    ):
        dataclasses.replace(SMALL, input_widths={})
    weights_only = dataclasses.replace(SMALL, layer_statistics=False, network_inputs=(), input_widths={})
    assert weights_only.side_inputs() == () and weights_only.input_widths == {}
    layers_only = dataclasses.replace(SMALL, network_inputs=())
    assert layers_only.side_inputs() == ("layer_summary", "layer_links")
    encoder = _encoder(layers_only)
    assert encoder.statistics[0].in_features == INPUT_WIDTHS["layer_summary"] + INPUT_WIDTHS["layer_links"]
    wide = _encoder(dataclasses.replace(SMALL, input_widths={**INPUT_WIDTHS, "probe": 7}))
    assert wide.network_inputs["probe"][0].in_features == 7


def test_gradients_flow_through_checkpointed_micro_batches():
    batch = _batch(_mixed_checkpoints())
    grads = {}
    for recompute in (True, False):
        encoder = _encoder(
            dataclasses.replace(SMALL, chunk_micro_batch=5, checkpoint_chunks=recompute)
        ).train()
        loss = ((encoder(batch) - batch["target"]) ** 2).mean()
        loss.backward()
        grads[recompute] = {name: p.grad for name, p in encoder.named_parameters()}
    for name, grad in grads[True].items():
        assert grad is not None and torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad, grads[False][name], atol=1e-6, rtol=1e-4, msg=name)
    assert grads[True]["weight_chunks.project.weight"].abs().sum() > 0
    assert grads[True]["bias_chunks.project.weight"].abs().sum() > 0


def test_a_batch_without_biases_trains_every_parameter():
    checkpoints = _mixed_checkpoints()
    for checkpoint in checkpoints:
        for layer in checkpoint.layers:
            layer.bias = None
    batch = _batch(checkpoints)
    assert batch["bias_chunks"].shape[0] == 0
    for positional in (True, False):
        cfg = dataclasses.replace(SMALL, chunk_micro_batch=4, positional_encoding=positional)
        encoder = _encoder(cfg).train()
        encoder(batch).sum().backward()
        # DDP needs a gradient (zero is fine) for every parameter in every step.
        for name, param in encoder.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_one_batch_overfit():
    # Eight MLPs that differ, as trained checkpoints do, in width and weight scale; random targets.
    rng = np.random.default_rng(5)
    checkpoints = []
    for i in range(8):
        width, scale = int(rng.integers(4, 12)), float(rng.uniform(0.2, 2.0))
        layers = [
            Layer("0", "linear", scale * _w(rng, width, 5), scale * _w(rng, width)),
            Layer("1", "linear", scale * _w(rng, 3, width)),
        ]
        checkpoints.append(
            Checkpoint(f"m{i}", "mlp", "digits", layers, {"test_accuracy": float(rng.uniform())})
        )
    batch = _batch(checkpoints)
    target = (batch["target"] - batch["target"].mean()) / batch["target"].std(unbiased=False)  # variance 1
    encoder = _encoder(dataclasses.replace(SMALL, checkpoint_chunks=False)).train()
    # Post-LN attention stacks diverge at Adam 1e-3 on this task (measured); 3e-4 converges in ~50-100 steps.
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-4, foreach=True)
    losses = []
    for _ in range(120):
        loss = ((encoder(batch) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Below a tenth of what predicting the mean costs, and of the initial loss.
    assert min(losses[-10:]) < min(losses[0], 1.0) / 10, (losses[0], losses[-10:])


def test_config_checks():
    with pytest.raises(ValueError, match="multiple of heads"):
        dataclasses.replace(SMALL, hidden=30, heads=4)
    with pytest.raises(ValueError, match="chunk_micro_batch"):
        dataclasses.replace(SMALL, chunk_micro_batch=0)
    encoder = _encoder(dataclasses.replace(SMALL, max_element_size=9))
    with pytest.raises(ValueError, match="element size 49 exceeds"):
        encoder(_batch(_mixed_checkpoints()))
    # The layer-type encoding indexes this tuple: kinds are only ever appended, so saved encoders keep theirs.
    assert LAYER_KINDS[:3] == ("linear", "conv1d", "conv2d")


def test_a_training_batch_of_one_checkpoint_works():
    # The last batch of an epoch can hold a single checkpoint; the embedding norm must not fail on it.
    encoder = _encoder().train()
    batch = _batch(_mixed_checkpoints()[:1])
    out = encoder(batch)
    assert out.shape == (1,) and torch.isfinite(out).all()
    out.sum().backward()


def test_prediction_does_not_depend_on_the_rest_of_the_batch_in_eval_mode():
    checkpoints = _mixed_checkpoints()
    encoder = _encoder().train()
    encoder(_batch(checkpoints))  # one training forward moves the running statistics
    encoder.eval()
    with torch.no_grad():
        together = encoder(_batch(checkpoints))
        alone = torch.cat([encoder(_batch([c])) for c in checkpoints])
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=1e-5)


def test_a_diverged_network_with_huge_weights_trains_without_overflow():
    # Real zoos hold networks whose training diverged (|w| = 2e4 in our small zoo, far more elsewhere);
    # they must not turn the encoder's activations or gradients into inf/NaN.
    checkpoints = _mixed_checkpoints()
    for layer in checkpoints[0].layers:
        layer.weight = layer.weight * np.float32(1e20)
    encoder = _encoder().train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    batch = _batch(checkpoints)
    for _ in range(5):
        out = encoder(batch)
        assert torch.isfinite(out).all()
        optimizer.zero_grad()
        ((out - batch["target"]) ** 2).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
        optimizer.step()


def test_an_export_of_another_format_version_is_refused_by_name(tmp_path):
    import json

    from pipeline.export import FORMAT_VERSION, META_FILE, save_encoder
    from pipeline.predict import load_encoder

    encoder = _encoder(SMALL)
    save_encoder(str(tmp_path), {k: v.numpy() for k, v in encoder.state_dict().items()}, {"encoder": {}})
    meta_path = tmp_path / META_FILE
    meta = json.loads(meta_path.read_text())
    assert meta["format_version"] == FORMAT_VERSION
    for version, made_by in ((None, "an earlier"), (FORMAT_VERSION + 1, "a later")):
        meta["format_version"] = version
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(ValueError, match=rf"exported by {made_by} version.*train it again"):
            load_encoder(str(tmp_path))


def test_an_export_that_does_not_record_its_size_is_refused_by_name(tmp_path):
    from pipeline.export import save_encoder
    from pipeline.predict import load_encoder

    encoder = _encoder(SMALL)
    meta = {"encoder": dataclasses.asdict(encoder.cfg)}
    del meta["encoder"]["hidden"], meta["encoder"]["heads"]
    save_encoder(str(tmp_path), {k: v.numpy() for k, v in encoder.state_dict().items()}, meta)
    with pytest.raises(ValueError, match="does not record its hidden, heads: it cannot be rebuilt"):
        load_encoder(str(tmp_path))


def test_an_encoder_built_for_other_side_input_widths_is_refused_by_name(tmp_path):
    from pipeline.export import save_encoder
    from pipeline.predict import load_encoder

    other = _encoder(dataclasses.replace(SMALL, input_widths={**INPUT_WIDTHS, "probe": 7}))
    state = {k: v.numpy() for k, v in other.state_dict().items()}
    save_encoder(str(tmp_path), state, {"encoder": dataclasses.asdict(other.cfg)})
    with pytest.raises(ValueError, match=rf"other widths.*probe: 7, here {PROBE_FEATURES}"):
        load_encoder(str(tmp_path))


def _exported_encoder_and_zoo(tmp_path, encoder, checkpoints, training_ids=None, **meta) -> tuple[str, str]:
    """An encoder exported as training exports it, and a native zoo of ``checkpoints``: (encoder, zoo) URIs.
    ``meta`` overrides the export's chunk size, property or target scaling."""
    from pipeline.export import save_encoder
    from pipeline.zoo import native

    settings = dataclasses.asdict(encoder.cfg)
    meta = {"encoder": settings, "chunk_size": 4, "normalize": "fan_in", "property": "test_accuracy"} | meta
    meta = {"loss": "mse", "target_mean": 0.5, "target_std": 0.2} | meta
    state = {k: v.numpy() for k, v in encoder.state_dict().items()}
    save_encoder(str(tmp_path / "encoder"), state, meta, training_ids)
    for c in checkpoints:
        c.properties["train_accuracy"] = 1.0  # the native format requires it
    native.write_zoo(str(tmp_path / "zoo"), checkpoints)
    return str(tmp_path / "encoder"), str(tmp_path / "zoo")


@pytest.mark.parametrize("layer_statistics", [True, False])
def test_prediction_gives_an_encoder_the_layer_summaries_it_reads(tmp_path, layer_statistics):
    from pipeline.predict import predict_zoo

    encoder = _encoder(dataclasses.replace(SMALL, layer_statistics=layer_statistics))
    checkpoints = _mixed_checkpoints()
    rows = predict_zoo(*_exported_encoder_and_zoo(tmp_path, encoder, checkpoints))["rows"]
    with torch.no_grad():
        expected = encoder(_batch(checkpoints)) * 0.2 + 0.5
    predicted = {r["id"]: r["prediction"] for r in rows}
    np.testing.assert_allclose([predicted[c.id] for c in checkpoints], expected.numpy(), rtol=1e-5, atol=1e-6)


def _six_with_accuracies() -> list[Checkpoint]:
    """Two sets of _mixed_checkpoints (the second's ids end in "-b"), each with a test accuracy."""
    checkpoints = _mixed_checkpoints(0) + _mixed_checkpoints(1)
    for c in checkpoints[3:]:
        c.id += "-b"
    for c, acc in zip(checkpoints, (0.1, 0.3, 0.5, 0.2, 0.6, 0.9), strict=True):
        c.properties["test_accuracy"] = acc
    return checkpoints


def test_prediction_scores_only_the_networks_the_encoder_never_saw(tmp_path):
    from pipeline.predict import predict_zoo, write_predictions

    checkpoints = _six_with_accuracies()
    seen = {"train": ["mlp", "cnn-b"], "val": ["c1d"]}
    result = predict_zoo(*_exported_encoder_and_zoo(tmp_path, _encoder(), checkpoints, seen))
    used = {r["id"]: r["used_in_training"] for r in result["rows"]}
    assert used == {"mlp": "train", "cnn-b": "train", "c1d": "val", "cnn": "", "mlp-b": "", "c1d-b": ""}
    assert result["training_ids_known"] and result["metrics"]["n"] == 3 and result["metrics_all"]["n"] == 6
    unseen = [r for r in result["rows"] if not r["used_in_training"]]
    assert result["per_subset"][0] == {"subset": "all", **result["metrics"]}
    assert {r["subset"] for r in result["per_subset"]} == {
        "all",
        "dataset=digits",
        "family=mlp",
        "family=cnn",
        "family=c1d",
    }
    assert result["metrics"]["mse"] == pytest.approx(
        np.mean([(r["prediction"] - r["true"]) ** 2 for r in unseen])
    )
    # Not the zoo it was trained on: this export names no zoo fingerprint.
    assert not result["same_zoo"]
    table = write_predictions(result["rows"], str(tmp_path / "predictions.csv"))
    lines = Path(table).read_text().splitlines()
    assert lines[0] == "id,family,dataset,prediction,true,used_in_training"
    assert {line.split(",")[0]: line.split(",")[-1] for line in lines[1:]} == used


def test_an_export_without_training_ids_scores_every_network(tmp_path):
    from pipeline.predict import predict_zoo

    checkpoints = _mixed_checkpoints()
    result = predict_zoo(*_exported_encoder_and_zoo(tmp_path, _encoder(), checkpoints))
    assert not result["training_ids_known"]
    assert result["metrics"]["n"] == result["metrics_all"]["n"] == 3
    assert all(r["used_in_training"] == "" for r in result["rows"])


def test_an_ensemble_predicts_the_mean_of_its_encoders_and_scores_each_alone(tmp_path):
    from pipeline.predict import predict_zoo

    checkpoints = _six_with_accuracies()
    # Two runs of different seeds, chunk sizes and target scalings, fitted and selected on different networks.
    first, zoo = _exported_encoder_and_zoo(
        tmp_path / "a", _encoder(seed=1), checkpoints, {"train": ["mlp"], "val": ["cnn"]}
    )
    second, _ = _exported_encoder_and_zoo(
        tmp_path / "b",
        _encoder(seed=2),
        checkpoints,
        {"train": ["cnn"], "val": ["c1d"]},
        chunk_size=8,
        target_mean=0.4,
    )
    alone = [predict_zoo(e, zoo) for e in (first, second)]
    together = predict_zoo([first, second], zoo)
    by_id = [{r["id"]: r["prediction"] for r in result["rows"]} for result in alone]
    ids = [r["id"] for r in together["rows"]]
    np.testing.assert_allclose(
        [r["prediction"] for r in together["rows"]], [(by_id[0][i] + by_id[1][i]) / 2 for i in ids], rtol=1e-6
    )
    # A network any member was fitted or selected on is left out of the ensemble's scores and its members'.
    used = {r["id"]: r["used_in_training"] for r in together["rows"]}
    assert used == {"mlp": "train", "cnn": "train", "c1d": "val", "mlp-b": "", "cnn-b": "", "c1d-b": ""}
    assert together["metrics"]["n"] == 3
    unseen = [r for r in together["rows"] if not r["used_in_training"]]
    for member, predicted in zip(together["members"], by_id, strict=True):
        expected = regression_metrics(
            np.array([predicted[r["id"]] for r in unseen]), np.array([r["true"] for r in unseen])
        )
        assert member["metrics"] == pytest.approx(expected)
    assert [m["encoder"] for m in together["members"]] == [first, second]


def test_an_ensemble_of_encoders_of_different_properties_is_refused(tmp_path):
    from pipeline.predict import predict_zoo

    checkpoints = _mixed_checkpoints()
    first, zoo = _exported_encoder_and_zoo(tmp_path / "a", _encoder(), checkpoints)
    gap, _ = _exported_encoder_and_zoo(tmp_path / "b", _encoder(), checkpoints, property="generalization_gap")
    with pytest.raises(
        ValueError, match="one property: .* predicts test_accuracy, .* predicts generalization_gap"
    ):
        predict_zoo([first, gap], zoo)
    with pytest.raises(ValueError, match="no encoder"):
        predict_zoo([], zoo)


def test_dataset_vectors_read_each_training_dataset_and_any_other_or_hidden_one_as_unknown():
    checkpoints = _mixed_checkpoints()
    for c, dataset in zip(checkpoints, ("digits", "shapes", "textures"), strict=True):
        c.dataset = dataset
    batch = _batch(checkpoints)
    cfg = dataclasses.replace(SMALL, datasets=["shapes", "digits"])  # an export's JSON reads back a list
    assert cfg.datasets == ("shapes", "digits")
    encoder, without = _encoder(cfg), _encoder(SMALL)  # built last: the other parts start the same
    torch.testing.assert_close(_embed(encoder, batch), _embed(without, batch))  # zero at the start
    with torch.no_grad():
        encoder.dataset_vectors.weight.normal_()
    vectors = encoder.dataset_vectors.weight.detach()
    shift = _embed(encoder, batch) - _embed(without, batch)
    torch.testing.assert_close(shift, vectors[[2, 1, 0]])  # digits, shapes, unknown textures
    hidden = dict(batch, dataset_present=torch.tensor([0.0, 1.0, 1.0]))
    torch.testing.assert_close((_embed(encoder, hidden) - _embed(without, batch))[0], vectors[0])
    with pytest.raises(ValueError, match="repeats"):
        dataclasses.replace(SMALL, datasets=("digits", "digits"))


def test_prediction_reads_the_dataset_vectors_the_encoder_was_trained_with(tmp_path):
    from pipeline.predict import predict_zoo

    encoder = _encoder(dataclasses.replace(SMALL, datasets=("digits",)))
    with torch.no_grad():
        encoder.dataset_vectors.weight.normal_()
    checkpoints = _mixed_checkpoints()
    checkpoints[0].dataset = "unseen"
    with torch.no_grad():
        expected = encoder(_batch(checkpoints)) * 0.2 + 0.5
    result = predict_zoo(*_exported_encoder_and_zoo(tmp_path, encoder, checkpoints))
    predicted = {r["id"]: r["prediction"] for r in result["rows"]}
    np.testing.assert_allclose([predicted[c.id] for c in checkpoints], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert result["unseen_datasets"] == {"unseen": 1}


def test_network_inputs_add_their_mlp_where_present_and_nothing_where_absent():
    """Each network input reaches the embedding through its own MLP, weighted by <key>_present; the values
    enter through asinh and a clip, so a diverged network's probe stays bounded."""
    both = dataclasses.replace(SMALL, network_inputs=("probe", "peer"))
    encoder = _encoder(both)
    without = _encoder(dataclasses.replace(SMALL, network_inputs=()))
    assert list(encoder.network_inputs) == ["probe", "peer"]
    batch = _batch(_mixed_checkpoints())
    assert batch["probe"].shape == (3, PROBE_FEATURES) and not batch["probe_present"].any()
    torch.testing.assert_close(_embed(encoder, batch), _embed(without, batch))  # nothing present, no change
    batch["peer"] = torch.full((3, INPUT_WIDTHS["peer"]), 1e30)
    batch["peer_present"] = torch.tensor([0.0, 1.0, 0.0])
    shift = _embed(encoder, batch) - _embed(without, batch)
    assert shift[[0, 2]].abs().max() == 0 and shift[1].abs().max() > 0
    expected = encoder.network_inputs["peer"](torch.full((1, INPUT_WIDTHS["peer"]), 10.0))[0]
    torch.testing.assert_close(shift[1], expected.detach())
    with pytest.raises(ValueError, match="repeats a key"):
        dataclasses.replace(SMALL, network_inputs=("probe", "probe"))
    missing = dict(batch)
    del missing["peer"]
    with pytest.raises(KeyError, match="'peer' input"):
        _embed(encoder, missing)


DEEPSETS = dataclasses.replace(SMALL, blocks="deepsets", layer_statistics=False, network_inputs=())


def test_deepsets_sees_one_set_of_weights_whatever_their_layers_order_or_chunking():
    torch.manual_seed(0)
    encoder = build_set_encoder(DEEPSETS).eval()
    assert isinstance(encoder, DeepSets)
    checkpoints = _mixed_checkpoints()
    with torch.no_grad():
        together = encoder(_batch(checkpoints))
        alone = torch.stack([encoder(_batch([c]))[0] for c in checkpoints])
        torch.testing.assert_close(together, alone)
        # Layers in another order and another chunk size: the same set of elements.
        cnn = checkpoints[1]
        shuffled = dataclasses.replace(cnn, layers=cnn.layers[::-1])
        torch.testing.assert_close(encoder(_batch([shuffled], chunk_size=7))[0], alone[1])
        # ... while other weights give another prediction.
        other = _mixed_checkpoints(seed=1)[1]
        assert not torch.allclose(encoder(_batch([other]))[0], alone[1])


def test_deepsets_refuses_inputs_it_would_not_read():
    from pipeline.config import PRESETS, from_dict

    with pytest.raises(ValueError, match="weights alone"):
        dataclasses.replace(SMALL, blocks="deepsets")
    with pytest.raises(ValueError, match="--probe-summary"):
        from_dict({"blocks": "deepsets"}, PRESETS["demo"]()).validate()
    PRESETS["deepsets"]().validate()


def test_deepsets_trains_every_parameter():
    torch.manual_seed(0)
    encoder = build_set_encoder(DEEPSETS).train()
    encoder(_batch(_mixed_checkpoints())).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
