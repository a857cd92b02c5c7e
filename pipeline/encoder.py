"""SNE: set-based neural network encoder over packed chunk batches (pipeline.collate), plus a property head.

Hierarchy (DESIGN.md, "SNE in one page"): chunk encoder (one vector per chunk) → layer encoder (one vector
per layer; weights and biases pooled apart, then merged by a small set encoder) → network encoder (the
embedding z of a checkpoint) → head. Every attention honours padding: padded elements, fully padded
chunks and fully padded layers never change a real output. Shapes: B checkpoints, Lt layers in the batch,
T chunks, C chunk size, E element size, D hidden width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.sets import MAB, PMA, SAB, SegmentMAB, dense_sets, feedforward, micro_batched, sinusoid

BLOCKS = ("paper", "compact", "deepsets")
ELEMENT_PROJECTIONS = ("linear", "random_features")
# The batch keys of a layer's summary (collate_chunk_records(..., layer_summaries=True)), read side by side.
LAYER_SUMMARY_KEYS = ("layer_summary", "layer_links")
ELEMENT_LIMIT = 10.0  # weight values enter the chunk encoder soft-clipped to this magnitude
INPUT_LIMIT = 10.0  # a network input's values enter its MLP (after asinh) clipped to this magnitude


@dataclass(kw_only=True)
class EncoderConfig:
    """Sizes and switches of the SNE encoder and its head (plain values: crosses Ray boundaries as a dict).

    The fields without a default are a run's choices: pipeline.train.encoder_config copies each from the
    TrainConfig field of the same name, whose default and --help line are their only ones. The comments here
    say what each does inside the encoder.
    """

    hidden: int  # D
    heads: int
    inducing_points: int  # m of the layer encoder's induced set attention
    max_element_size: int = 49  # largest kernel the element projection accepts (7x7)
    chunk_micro_batch: int  # chunks encoded at once; memory follows this, not the parameter count
    checkpoint_chunks: bool = True  # recompute micro-batches in backward so training memory stays bounded
    positional_encoding: bool  # layer-type + depth encodings; False is the paper's ablation
    # Chunk → layer → network. False pools every chunk of a network into its embedding at once, with the
    # layer encoder's pooling and no layer, merge or network stage: the paper's ablation "without positional
    # encodings and hierarchy" (with positional_encoding False), which raised its INR MSE from 0.098 to 7.452.
    hierarchy: bool
    head_hidden: int = 64
    # "paper": the published arrangement (docs/model.md): two SABs in every set-to-set stage, SABs over a
    # layer's chunks. "compact": one SAB after the chunk encodings and in the merge and network stages, an
    # induced set attention over a layer's chunks (linear in their count, so a big layer fits in memory).
    # "deepsets": not SNE but the DeepSets baseline of the paper's tables (DeepSets below): every weight is
    # one member of a single set, no attention, no layers, no positions.
    blocks: str
    # How a chunk element (a scalar weight or a k*k kernel) becomes a D-vector: "linear", or
    # "random_features" (Linear → GELU → Linear, the first initialised as random features), which keeps an
    # element's magnitude through the first LayerNorm: validation tau 0.649 against 0.622 for "linear" over
    # three seeds on a Small CNN Zoo layout zoo (docs/model.md).
    element_projection: str
    # Batch-standardise the embedding before the head. Each pooling stage averages many elements, so at
    # initialisation the embeddings of different networks differ by ~1e-3 of their norm (measured on the small
    # zoo; ~1e-4 on tiny MLPs) and the head sees nearly one point; standardising across the batch restores
    # a unit spread between checkpoints from the first step.
    embedding_norm: bool
    # Add an MLP of a summary of each layer to the layer vector before the network encoder. Our addition to
    # the paper's SNE: attention over chunks learns such moments slowly from ~1,000 networks, and they carry
    # much of the signal. The summary is the layer seen as sets (layer_summary: quantiles of its values,
    # magnitudes, row and column RMS and bias, and its sizes), which as features for trees beat STATNN's 7
    # numbers per tensor on both our zoos (research/zoo_ceiling.py), beside how its units' gains chain with
    # the layers around it (layer_links), which no layer on its own shows and which added tau on small,
    # cross-architecture and INR zoos (docs/results.md). Both are permutation-invariant, so a network and
    # its permuted copy share them and logit invariance acts on the chunk path alone.
    layer_statistics: bool
    # The per-network vectors added to the embedding, one MLP each, by batch key (pipeline.side_inputs
    # lists them; a run's switches choose them): "probe", what the network computes on fixed data-free noise
    # inputs (pipeline.probes), as the function fixes most of what SNE predicts and reading it off weight
    # statistics takes more training networks than a zoo has; "peer", a classifier's agreement on those
    # probes with the training networks of its dataset (off by default: where the test networks have none,
    # an unseen dataset, it costs R² even with training's context dropout; docs/results.md). Our additions,
    # not the paper's. A network without one (batch["<key>_present"] 0) adds nothing; a function-preserving
    # permutation keeps them, so logit invariance still acts on the weight path. Empty: weights only.
    network_inputs: tuple[str, ...] = ()
    # The datasets of the training networks, sorted. Each gets a learned vector added to the embedding: what
    # networks trained for that task tend to reach, which no weight or probe shows on its own (on small,
    # trees on the probe and peer numbers rank test accuracy at tau 0.78, and 0.80 told the dataset; docs/results.md).
    # Networks of any other dataset, or hidden in training (dataset_present 0), get the vector of an unknown
    # one. Empty: no dataset is read (the paper's SNE; encoders exported before it).
    datasets: tuple[str, ...] = ()
    # The width of each side input the batches carry (pipeline.side_inputs.INPUT_WIDTHS), at least of those this
    # encoder reads: the encoder is built for them without importing what computes them, and an export
    # records what it reads.
    input_widths: dict[str, int] = field(default_factory=dict)

    def side_inputs(self) -> tuple[str, ...]:
        """The batch keys of the side inputs this encoder reads (each needs a width in input_widths)."""
        keys = LAYER_SUMMARY_KEYS if self.layer_statistics else ()
        return (*keys, *self.network_inputs)

    def __post_init__(self) -> None:
        self.datasets = tuple(str(d) for d in self.datasets)  # a JSON export reads back a list
        self.network_inputs = tuple(str(k) for k in self.network_inputs)
        if len(set(self.network_inputs)) != len(self.network_inputs):
            raise ValueError(f"EncoderConfig.network_inputs repeats a key: {self.network_inputs}")
        if len(set(self.datasets)) != len(self.datasets):
            raise ValueError(f"EncoderConfig.datasets repeats a name: {self.datasets}")
        for name in (
            "hidden",
            "heads",
            "inducing_points",
            "max_element_size",
            "chunk_micro_batch",
            "head_hidden",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(
                    f"EncoderConfig.{name} must be a positive integer, got {getattr(self, name)!r}"
                )
        if self.hidden % self.heads or self.hidden % 4:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads}) and of 4")
        if self.blocks not in BLOCKS:
            raise ValueError(f"blocks must be one of {BLOCKS}, got {self.blocks!r}")
        if self.element_projection not in ELEMENT_PROJECTIONS:
            raise ValueError(
                f"element_projection must be one of {ELEMENT_PROJECTIONS}, got {self.element_projection!r}"
            )
        if self.blocks == "deepsets" and (self.layer_statistics or self.network_inputs or self.datasets):
            raise ValueError(
                "blocks 'deepsets' reads the weights alone: set layer_statistics False and network_inputs "
                "and datasets empty"
            )
        if not self.hierarchy and self.layer_statistics:
            raise ValueError(
                "hierarchy=False has no layer vectors to add a layer summary to: set layer_statistics=False"
            )
        self.input_widths = {str(k): int(v) for k, v in self.input_widths.items()}
        missing = [key for key in self.side_inputs() if self.input_widths.get(key, 0) < 1]
        if missing:
            raise ValueError(
                f"EncoderConfig.input_widths needs a positive width for {', '.join(missing)}, the side inputs "
                "this encoder reads (pipeline.side_inputs.INPUT_WIDTHS has them)"
            )


class ChunkEncoder(nn.Module):
    """One chunk (C elements of up to max_element_size scalars) → one vector.

    project → SAB → SAB → + layer-type and depth encodings → SAB (→ SAB with blocks "paper") → PMA.
    """

    def __init__(self, cfg: EncoderConfig, max_element_size: int) -> None:
        super().__init__()
        self.max_element_size = max_element_size
        self.project = nn.Linear(max_element_size, cfg.hidden)
        if cfg.element_projection == "linear":
            self.project_out = None
        else:
            # Linear → GELU → Linear, initialised as random features with kinks spread over the typical
            # range of (fan-in normalised) weights: a homogeneous projection would let the first LayerNorm
            # divide out each element's magnitude, and weight scale is much of what tells checkpoints apart
            # (measured on MLPs of different scales: 2.5x the spread between checkpoints after projection).
            nn.init.normal_(self.project.weight)
            nn.init.uniform_(self.project.bias, -2.0, 2.0)
            self.project_out = nn.Linear(cfg.hidden, cfg.hidden)
        self.sab1, self.sab2, self.sab3 = (SAB(cfg.hidden, cfg.heads) for _ in range(3))
        self.sab4 = SAB(cfg.hidden, cfg.heads) if cfg.blocks == "paper" else None
        self.pma = PMA(cfg.hidden, cfg.heads)

    def forward(
        self,
        chunks: torch.Tensor,
        mask: torch.Tensor,
        layer: torch.Tensor,
        layer_element_size: torch.Tensor,
        layer_position: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """chunks (N, C, E), mask (N, C), layer (N,) indexing the (Lt,) element sizes and (Lt, D) positions.

        Returns (N, D). layer_position None leaves out the layer-type and depth encodings.
        """
        e = chunks.shape[-1]
        if e > self.max_element_size:
            raise ValueError(
                f"element size {e} exceeds EncoderConfig.max_element_size={self.max_element_size}"
            )
        # Zero-padded element entries add nothing, so the first e input columns are the whole projection;
        # 1/sqrt(element size) keeps a k*k kernel on the scale of a scalar weight.
        scale = layer_element_size[layer].to(chunks.dtype).rsqrt()[:, None, None]
        # Soft-clip to ±ELEMENT_LIMIT: near-identity for ordinary (fan-in normalised, |w| of a few units)
        # weights, bounded for a diverged network's (the small zoo holds one with |w| = 22,000, whose
        # activations overflowed to NaN a few steps into training).
        chunks = ELEMENT_LIMIT * torch.tanh(chunks / ELEMENT_LIMIT)
        x = F.linear(chunks, self.project.weight[:, :e]) * scale + self.project.bias  # (N, C, D)
        if self.project_out is not None:
            x = self.project_out(F.gelu(x))
        x = self.sab2(self.sab1(x, mask), mask)
        if layer_position is not None:
            x = x + layer_position[layer][:, None, :]
        x = self.sab3(x, mask)
        if self.sab4 is not None:
            x = self.sab4(x, mask)
        return self.pma(x, mask)


class LayerSAB(nn.Module):
    """Chunk vectors (T, D) of each layer → one vector per layer (Lt, D): SAB → SAB → + depth → PMA.

    The paper's layer encoder: full attention among a layer's chunks, quadratic in their count.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.sab1, self.sab2 = SAB(cfg.hidden, cfg.heads), SAB(cfg.hidden, cfg.heads)
        self.pma = PMA(cfg.hidden, cfg.heads)

    def forward(
        self,
        x: torch.Tensor,
        layer: torch.Tensor,
        valid: torch.Tensor,
        depth: torch.Tensor | None,
        num_layers: int,
        micro: int,
        recompute: bool,
    ) -> torch.Tensor:
        dense, mask = dense_sets(x, layer, valid, num_layers)  # (Lt, Tmax, D)
        h = self.sab2(self.sab1(dense, mask), mask)
        if depth is not None:
            h = h + depth[:, None, :]
        return self.pma(h, mask)


class LayerPool(nn.Module):
    """Chunk vectors (T, D) of each layer → one vector per layer (Lt, D): ISAB → + depth → PMA.

    ISAB(X) = MAB(X, MAB(I, X)) with m inducing points (linear in the number of chunks); PMA(Y) =
    MAB(S, rFF(Y)) with one seed. The ISAB output is produced slice by slice inside PMA's attention, so the
    only (T, D) tensor is the input.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.inducing = nn.Parameter(torch.randn(cfg.inducing_points, d) / math.sqrt(d))
        self.induce = SegmentMAB(d, cfg.heads)
        self.back = MAB(d, cfg.heads)
        self.seed = nn.Parameter(torch.zeros(1, d))  # zero for the same reason as PMA's
        self.ff = feedforward(d)
        self.pool = SegmentMAB(d, cfg.heads)

    def _features(
        self, x: torch.Tensor, layer: torch.Tensor, induced: torch.Tensor, depth: torch.Tensor | None
    ) -> torch.Tensor:
        """rFF(ISAB(X) + depth) for rows x (n, D): each chunk attends to its own layer's m induced vectors."""
        y = self.back(x[:, None], induced[layer])[:, 0]
        if depth is not None:
            y = y + depth[layer]
        return self.ff(y)

    def forward(
        self,
        x: torch.Tensor,
        layer: torch.Tensor,
        valid: torch.Tensor,
        depth: torch.Tensor | None,
        num_layers: int,
        micro: int,
        recompute: bool,
    ) -> torch.Tensor:
        induced = self.induce(self.inducing, x, layer, valid, num_layers, micro, recompute)  # (Lt, m, D)
        pooled = self.pool(
            self.seed,
            x,
            layer,
            valid,
            num_layers,
            micro,
            recompute,
            features=self._features,
            shared=(induced, depth),
        )
        return pooled[:, 0]


class DeepSets(nn.Module):
    """The DeepSets baseline (Zaheer et al. 2017) over the packed chunk batches SNE reads: every weight and
    bias element of a network is one member of one set; phi embeds each (the element projection SNE's chunk
    encoder starts with, then an MLP), the network is the mean of its members' embeddings, and rho (an MLP,
    then SNE's embedding norm and head) predicts. It knows nothing of chunks, layers or depth, and is
    invariant to every permutation of a network's weights, function-preserving or not.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.weight_project = nn.Linear(cfg.max_element_size, d)
        self.bias_project = nn.Linear(1, d)
        self.phi = nn.Sequential(nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.rho = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.embedding_norm = nn.BatchNorm1d(d) if cfg.embedding_norm else nn.Identity()
        self.head = nn.Sequential(nn.Linear(d, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, 1))

    def _member_sums(self, project: nn.Linear, chunks: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor):
        e = chunks.shape[-1]
        x = ELEMENT_LIMIT * torch.tanh(chunks / ELEMENT_LIMIT)
        x = F.linear(x, project.weight[:, :e]) * scale[:, None, None] + project.bias  # (N, C, D)
        return (self.phi(x) * mask[..., None].to(x.dtype)).sum(dim=1)  # (N, D)

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        owner = batch["layer_checkpoint"]
        num_checkpoints = int(owner.max()) + 1
        micro = self.cfg.chunk_micro_batch
        recompute = self.cfg.checkpoint_chunks and self.training and torch.is_grad_enabled()
        total = batch["weight_chunks"].new_zeros((num_checkpoints, self.cfg.hidden))
        count = batch["weight_chunks"].new_zeros((num_checkpoints,))
        for project, prefix in ((self.weight_project, "weight"), (self.bias_project, "bias")):
            chunks, mask, layer = batch[f"{prefix}_chunks"], batch[f"{prefix}_mask"], batch[f"{prefix}_layer"]
            if chunks.shape[-1] > project.in_features:
                raise ValueError(
                    f"element size {chunks.shape[-1]} exceeds EncoderConfig.max_element_size="
                    f"{self.cfg.max_element_size}"
                )
            sizes = batch["layer_element_size"] if prefix == "weight" else torch.ones_like(owner)
            scale = sizes[layer].to(chunks.dtype).rsqrt()  # a k*k kernel on the scale of a scalar weight

            def members(c, m, s, project=project):
                return self._member_sums(project, c, m, s)

            sums = micro_batched(members, micro, recompute, chunks, mask, scale)
            total = total.index_add(0, owner[layer], sums)
            count = count.index_add(0, owner[layer], mask.sum(dim=1).to(count.dtype))
        return self.rho(total / count.clamp(min=1.0)[:, None])

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return _predict(self, self.embed(batch))


def _predict(encoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The head's prediction (B,) from embeddings (B, D), through the encoder's embedding norm."""
    if encoder.training and z.shape[0] < 2 and isinstance(encoder.embedding_norm, nn.BatchNorm1d):
        # One checkpoint has no batch spread to standardise by (the last batch of an epoch can be
        # this small): use the running statistics, as in evaluation, instead of failing.
        norm = encoder.embedding_norm
        z = F.batch_norm(z, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)
    else:
        z = encoder.embedding_norm(z)
    return encoder.head(z)[:, 0]


def build_set_encoder(cfg: EncoderConfig) -> nn.Module:
    """The encoder a config describes: SNE, or the DeepSets baseline for blocks "deepsets"."""
    return DeepSets(cfg) if cfg.blocks == "deepsets" else SNE(cfg)


class SNE(nn.Module):
    """Set-based neural network encoder + property head over a packed batch from collate_chunk_records.

    embed(batch) → (B, D) embeddings; forward(batch) → (B,) predictions. Both are invariant to the order of
    chunks within a layer and to padding (padded elements, chunks or layers), and any mix of linear / conv
    layers may share a batch. Memory follows chunk_micro_batch; only the (T, D) chunk vectors scale with T.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.weight_chunks = ChunkEncoder(cfg, cfg.max_element_size)
        self.bias_chunks = ChunkEncoder(cfg, 1)
        layer_encoder = LayerSAB if cfg.blocks == "paper" else LayerPool
        self.weight_layers = layer_encoder(cfg)  # without the hierarchy: the pooling of a network's chunks
        # Without the hierarchy these stages do not exist (an unused parameter would stall DDP).
        staged = cfg.hierarchy
        self.bias_layers = layer_encoder(cfg) if staged else None
        self.merge_sab = SAB(d, cfg.heads) if staged else None
        self.merge_pma = PMA(d, cfg.heads) if staged else None
        self.network_sab = SAB(d, cfg.heads) if staged else None
        self.network_pma = PMA(d, cfg.heads) if staged else None
        # The paper stacks two SABs in the merge and network stages.
        paper = cfg.blocks == "paper" and staged
        self.merge_sab2 = SAB(d, cfg.heads) if paper else None
        self.network_sab2 = SAB(d, cfg.heads) if paper else None
        self.embedding_norm = nn.BatchNorm1d(d) if cfg.embedding_norm else nn.Identity()
        self.statistics = (
            nn.Sequential(nn.Linear(self._width(*LAYER_SUMMARY_KEYS), d), nn.GELU(), nn.Linear(d, d))
            if cfg.layer_statistics
            else None
        )
        self.head = nn.Sequential(nn.Linear(d, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, 1))
        # Built last, so the other parts start from the same draws with and without them.
        self.network_inputs = nn.ModuleDict(
            {
                key: nn.Sequential(nn.Linear(self._width(key), d), nn.GELU(), nn.Linear(d, d))
                for key in cfg.network_inputs
            }
        )
        # Row 0 is the unknown dataset. Zero at the start, so an encoder begins as it would without them.
        self.dataset_vectors = nn.Embedding(len(cfg.datasets) + 1, d) if cfg.datasets else None
        if self.dataset_vectors is not None:
            nn.init.zeros_(self.dataset_vectors.weight)
        self._dataset_row = {name: row for row, name in enumerate(cfg.datasets, start=1)}

    def _width(self, *keys: str) -> int:
        return sum(self.cfg.input_widths[key] for key in keys)

    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        """Embeddings z (B, D) of the checkpoints in a packed batch."""
        cfg = self.cfg
        kind, depth, owner = batch["layer_kind"], batch["layer_depth"], batch["layer_checkpoint"]
        num_layers = kind.shape[0]
        num_checkpoints = int(owner.max()) + 1
        micro = cfg.chunk_micro_batch
        recompute = cfg.checkpoint_chunks and self.training and torch.is_grad_enabled()
        if cfg.positional_encoding:
            half = cfg.hidden // 2
            layer_type = torch.cat((sinusoid(kind, half), sinusoid(batch["layer_element_size"], half)), dim=1)
            depth_code = sinusoid(depth, cfg.hidden)  # (Lt, D)
            chunk_position = layer_type + depth_code
        else:
            depth_code = chunk_position = None

        chunk_vectors = []
        for encoder, prefix in ((self.weight_chunks, "weight"), (self.bias_chunks, "bias")):
            chunks, mask, layer = batch[f"{prefix}_chunks"], batch[f"{prefix}_mask"], batch[f"{prefix}_layer"]
            # Bias elements are scalars whatever the layer's kernel size.
            sizes = batch["layer_element_size"] if prefix == "weight" else torch.ones_like(kind)
            shared = (sizes, chunk_position)
            vectors = micro_batched(encoder, micro, recompute, chunks, mask, layer, shared=shared)  # (T, D)
            chunk_vectors.append((vectors, layer, mask.any(dim=1)))  # fully padded chunks are not members
        if not cfg.hierarchy:
            vectors, layer, valid = (torch.cat(parts) for parts in zip(*chunk_vectors, strict=True))
            z = self.weight_layers(vectors, owner[layer], valid, None, num_checkpoints, micro, recompute)
            return self._side_inputs(z, batch)

        layer_vectors = []
        for pool, (vectors, layer, valid) in zip(
            (self.weight_layers, self.bias_layers), chunk_vectors, strict=True
        ):
            pooled = pool(vectors, layer, valid, depth_code, num_layers, micro, recompute)  # (Lt, D)
            present = torch.zeros(num_layers, dtype=torch.bool, device=kind.device).index_put(
                (layer[valid],), torch.ones_like(layer[valid], dtype=torch.bool)
            )
            layer_vectors.append((pooled, present))

        # Weights and biases of a layer form a set of up to two members, merged by their own set encoder.
        members = torch.stack([v for v, _ in layer_vectors], dim=1)  # (Lt, 2, D)
        member_mask = torch.stack([p for _, p in layer_vectors], dim=1)  # (Lt, 2)
        merged = self.merge_sab(members, member_mask)
        if self.merge_sab2 is not None:
            merged = self.merge_sab2(merged, member_mask)
        layers = self.merge_pma(merged, member_mask)  # (Lt, D)
        layer_valid = member_mask[:, 0]  # a layer without real weights is padding
        if depth_code is not None:
            layers = layers + depth_code
        if self.statistics is not None:
            # Soft-clipped like the chunk elements: a diverged network's moments stay bounded.
            missing = [key for key in LAYER_SUMMARY_KEYS if key not in batch]
            if missing:
                raise KeyError(
                    f"this encoder reads each layer's summary, but the batch has no {', '.join(missing)} "
                    "(collate_chunk_records(..., layer_summaries=True) adds them)"
                )
            stats = torch.cat([batch[key] for key in LAYER_SUMMARY_KEYS], dim=1).to(layers.dtype)
            layers = layers + self.statistics(ELEMENT_LIMIT * torch.tanh(stats / ELEMENT_LIMIT))

        # The layers of each checkpoint as a dense (B, Lmax, D) set; checkpoints have few layers.
        dense, dense_mask = dense_sets(layers, owner, layer_valid, num_checkpoints)
        h = self.network_sab(dense, dense_mask)
        if self.network_sab2 is not None:
            h = self.network_sab2(h, dense_mask)
        return self._side_inputs(self.network_pma(h, dense_mask), batch)

    def _side_inputs(self, z: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The embedding z (B, D) plus the MLPs of the side inputs this encoder reads."""
        for key, mlp in self.network_inputs.items():
            if key not in batch:
                raise KeyError(
                    f"this encoder reads each network's {key!r} input, but the batch has none "
                    "(collate_chunk_records adds every one of pipeline.side_inputs.NETWORK_INPUTS)"
                )
            # asinh, then clipped: the inputs span decades (a probe's output scale, a KL divergence) and a
            # diverged network's stay bounded.
            values = torch.asinh(batch[key].to(z.dtype)).clamp(-INPUT_LIMIT, INPUT_LIMIT)
            z = z + batch[f"{key}_present"].to(z.dtype)[:, None] * mlp(values)
        if self.dataset_vectors is not None:
            rows = torch.tensor([self._dataset_row.get(d, 0) for d in batch["datasets"]], device=z.device)
            shown = batch["dataset_present"].to(device=z.device, dtype=torch.long)  # 0/1
            z = z + self.dataset_vectors(rows * shown)  # a hidden dataset reads row 0, the unknown one
        return z

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Predicted property (B,) for a packed batch."""
        return _predict(self, self.embed(batch))
