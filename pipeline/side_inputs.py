"""What the extended model reads beside the weights, declared in one table.

Three kinds of side input reach the encoder:

- **network inputs** (``NETWORK_INPUTS``): one fixed-width vector per network, held in a chunk record column
  (null where a network has none). Collate packs each into ``key`` (B, width) and ``key_present`` (B,); the
  encoder adds an MLP of every one it reads (``EncoderConfig.network_inputs``) to the network embedding,
  without knowing what the numbers mean. A network without one adds nothing.
- **layer summaries** (``LAYER_INPUT_WIDTHS``): per-layer numbers collate computes from the weights
  themselves (with ``EncoderConfig.layer_statistics``), added to each layer vector.
- **the dataset**: each record's ``dataset`` name, read as a learned vector per training dataset
  (``EncoderConfig.datasets``, fitted as the sorted datasets of the training networks; any other reads as
  unknown). It is a name, not numbers, so it has no width here.

None depends on the order of a network's units (the numbers are functions of what it computes or of its
weights' statistics), so a function-preserving permutation keeps them: ``invariance.permute_record`` copies every column but the
weights (``chunking.WEIGHT_COLUMNS``), and logit invariance acts on the weight path alone.

A new network input is one entry here, the TrainConfig switch it names, and the stage that fills its
column; collate, the encoder config, TrainConfig.reads_probes and predict read it from this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.baselines import LAYER_SUMMARY, LINK_SUMMARY
from pipeline.probes import PEER_FEATURES, PROBE_FEATURES


@dataclass(frozen=True)
class NetworkInput:
    key: str  # the chunk record column and the batch key
    width: int
    switch: str  # the TrainConfig field that makes a run read it
    needs_probes: bool  # computed from the probes, so prepare (or predict) must run them
    filled_by: str  # where its column gets its values


NETWORK_INPUTS = (
    NetworkInput(
        "probe",
        PROBE_FEATURES,
        "probe_summary",
        needs_probes=True,
        filled_by="prepare's probe stage (pipeline.probes.probe_table), and predict for new networks",
    ),
    NetworkInput(
        "peer",
        PEER_FEATURES,
        "peer_agreement",
        needs_probes=True,
        filled_by="the driver's split and predict: pipeline.probes.PeerConsensus, fitted on the training "
        "networks and exported with the encoder",
    ),
)
NETWORK_INPUT = {entry.key: entry for entry in NETWORK_INPUTS}

# Per layer: the quantiles and sizes of its (normalised) weights and bias; how its unit gains chain with the
# layers around it.
LAYER_INPUT_WIDTHS = {
    "layer_summary": LAYER_SUMMARY,
    "layer_links": LINK_SUMMARY,
}
# Every side input a collated batch can carry and its width: what an encoder is built for
# (EncoderConfig.input_widths) and what predict checks an export against.
INPUT_WIDTHS = {**LAYER_INPUT_WIDTHS, **{entry.key: entry.width for entry in NETWORK_INPUTS}}


def network_inputs(config) -> tuple[str, ...]:
    """The keys of the network inputs a run config (pipeline.config.TrainConfig) switches on, in table
    order (the order the encoder builds their MLPs in)."""
    return tuple(entry.key for entry in NETWORK_INPUTS if getattr(config, entry.switch))


def reads_probes(keys) -> bool:
    """Whether an encoder reading the network inputs ``keys`` needs the networks probed."""
    return any(NETWORK_INPUT[key].needs_probes for key in keys)
