"""Set blocks: attention over sets of vectors, padding-aware, independent of what the sets hold.

MAB, SAB and PMA over dense padded sets (N, K, D) with a mask (N, K) (Lee et al., Set Transformer), and their
segment variants over packed members (T, D) that name their set, linear in T and computed in slices so
memory follows the slice, not the set. Imports only torch: ``pipeline.encoder`` builds SNE's hierarchy from
these blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def sinusoid(position: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal encoding of integer positions (N,) → (N, dim)."""
    freq = torch.exp(
        torch.arange(0, dim, 2, device=position.device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    angle = position.float()[:, None] * freq  # (N, dim/2)
    return torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(1)


def feedforward(dim: int) -> nn.Module:
    """The row-wise feed-forward (rFF) of every block: Linear → GELU → Linear at width dim."""
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))


def micro_batched(
    fn: Callable[..., torch.Tensor],
    micro: int,
    recompute: bool,
    *rows: torch.Tensor,
    shared: tuple[torch.Tensor | None, ...] = (),
) -> torch.Tensor:
    """fn over row slices of `rows` (all of length T), `micro` rows at a time, concatenated along dim 0.

    With recompute, each slice runs under activation checkpointing, so backward memory follows the slice.
    `shared` tensors are passed whole to every call.
    """
    total = rows[0].shape[0]
    if total <= micro:
        # One slice: recomputing it in backward would hold the same activations at the peak and cost a
        # second forward (measured: 1.6x the step time), so memory already follows the slice.
        return fn(*rows, *shared)
    if not torch.is_grad_enabled():
        # Inference: fill one output instead of concatenating, which would hold the result twice.
        first = fn(*(r[:micro] for r in rows), *shared)
        out = first.new_empty((total, *first.shape[1:]))
        out[: first.shape[0]] = first
        for s in range(micro, total, micro):
            out[s : s + micro] = fn(*(r[s : s + micro] for r in rows), *shared)
        return out
    outs = []
    for s in range(0, total, micro):
        args = (*(r[s : s + micro] for r in rows), *shared)
        outs.append(checkpoint(fn, *args, use_reentrant=False) if recompute else fn(*args))
    return torch.cat(outs)


class MultiHead(nn.Module):
    """Multi-head attention of queries x (N, Q, D) over keys/values y (N, K, D) with a key mask (N, K)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        n, nq, d = x.shape
        nk, h = y.shape[1], self.heads
        q = self.q(x).view(n, nq, h, d // h).transpose(1, 2)  # (N, h, Q, dh)
        k = self.k(y).view(n, nk, h, d // h).transpose(1, 2)  # (N, h, K, dh)
        v = self.v(y).view(n, nk, h, d // h).transpose(1, 2)
        bias = None
        if key_mask is not None:
            # An additive mask with a finite fill (not a boolean one) keeps fully padded sets finite; their
            # rows are ignored downstream. The fused kernel is 2x faster than matmul-softmax-matmul on CPU.
            bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~key_mask, torch.finfo(q.dtype).min)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (N, h, Q, dh)
        return self.o(out.transpose(1, 2).reshape(n, nq, d))


class MAB(nn.Module):
    """MAB(X, Y) = LN(H + rFF(H)), H = LN(X + MultiHead(X, Y, Y))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = MultiHead(dim, heads)
        self.ff = feedforward(dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln1(x + self.attn(x, y, key_mask))
        return self.ln2(h + self.ff(h))


class SAB(nn.Module):
    """SAB(X) = MAB(X, X) over sets (N, K, D) with mask (N, K); permutation-equivariant."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.mab = MAB(dim, heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mab(x, x, mask)


class PMA(nn.Module):
    """PMA(X) = MAB(S, rFF(X)) with one learned seed: sets (N, K, D) with mask (N, K) → (N, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        # A zero seed adds no input-independent offset before the LayerNorm; a random one swamps the
        # differences between sets at initialisation (measured: 10x less spread between embeddings).
        self.seed = nn.Parameter(torch.zeros(1, 1, dim))
        self.ff = feedforward(dim)
        self.mab = MAB(dim, heads)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mab(self.seed.expand(x.shape[0], -1, -1), self.ff(x), mask)[:, 0]


class SegmentMultiHead(nn.Module):
    """Shared queries (Q, D) attend, per segment, over packed elements x (T, D) → (S, Q, D).

    Linear in T and computed `micro` rows at a time with a running (online) softmax, so a layer with many
    chunks costs no padding and no (T, D) intermediate beyond x itself: `features(x_rows, segment_rows,
    *shared)` optionally maps rows of x to the key/value inputs slice by slice. Invalid elements are
    ignored; a segment without valid elements gets 0. With recompute, slices are activation-checkpointed.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def _slice(
        self,
        x: torch.Tensor,
        segment: torch.Tensor,
        valid: torch.Tensor,
        q: torch.Tensor,
        peak: torch.Tensor,
        denom: torch.Tensor,
        summed: torch.Tensor,
        features: Callable[..., torch.Tensor] | None,
        *shared: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fold rows x (n, D) into the running per-segment max (S,Q,h), denominator (S,Q,h), sum (S,Q,h,dh)."""
        f = x if features is None else features(x, segment, *shared)
        n, (_, h, dh) = f.shape[0], q.shape
        k = self.k(f).view(n, h, dh)
        v = self.v(f).view(n, h, dh)
        scores = torch.einsum("qhd,thd->tqh", q, k)  # (n, Q, h)
        scores = scores.masked_fill(~valid[:, None, None], torch.finfo(scores.dtype).min)
        # Softmax is shift-invariant, so the running max needs no gradient.
        index = segment[:, None, None].expand_as(scores)
        new_peak = peak.scatter_reduce(0, index, scores.detach(), "amax")
        rescale = torch.exp(peak - new_peak)  # (S, Q, h), 1 where the max did not move
        weight = torch.exp(scores - new_peak[segment]) * valid[:, None, None]  # (n, Q, h); never overflows
        denom = denom * rescale + denom.new_zeros(denom.shape).index_add(0, segment, weight)
        part = summed.new_zeros(summed.shape).index_add(0, segment, weight[..., None] * v[:, None])
        return new_peak, denom, summed * rescale[..., None] + part

    def forward(
        self,
        queries: torch.Tensor,
        x: torch.Tensor,
        segment: torch.Tensor,
        valid: torch.Tensor,
        num_segments: int,
        micro: int,
        recompute: bool = False,
        features: Callable[..., torch.Tensor] | None = None,
        shared: tuple[torch.Tensor | None, ...] = (),
    ) -> torch.Tensor:
        nq, d = queries.shape
        h, dh = self.heads, d // self.heads
        q = self.q(queries).view(nq, h, dh) / math.sqrt(dh)
        peak = q.new_full((num_segments, nq, h), torch.finfo(q.dtype).min)
        denom = q.new_zeros(num_segments, nq, h)
        summed = q.new_zeros(num_segments, nq, h, dh)
        # At least one slice, so that every parameter is used even for an empty set (DDP requires it).
        for s in range(0, max(x.shape[0], 1), micro):
            rows = (x[s : s + micro], segment[s : s + micro], valid[s : s + micro])
            args = (*rows, q, peak, denom, summed, features, *shared)
            if recompute:
                peak, denom, summed = checkpoint(self._slice, *args, use_reentrant=False)
            else:
                peak, denom, summed = self._slice(*args)
        out = summed / denom.clamp_min(1e-30)[..., None]  # (S, Q, h, dh)
        return self.o(out.reshape(num_segments, nq, d))


class SegmentMAB(nn.Module):
    """MAB(I, X) for queries I (Q, D) shared by every segment of packed x (T, D) → (S, Q, D)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = SegmentMultiHead(dim, heads)
        self.ff = feedforward(dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """queries (Q, D); the rest as SegmentMultiHead.forward."""
        h = self.ln1(queries + self.attn(queries, *args, **kwargs))
        return self.ln2(h + self.ff(h))


def dense_sets(
    values: torch.Tensor, owner: torch.Tensor, valid: torch.Tensor, num_sets: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed members (T, D) of ``num_sets`` sets (owner (T,) names each member's set) → a dense padded
    (S, Kmax, D) tensor and its mask (S, Kmax), with invalid members masked out. Members keep their order."""
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=num_sets)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(owner)
    slot[order] = torch.arange(owner.shape[0], device=owner.device) - starts[owner[order]]
    width = max(int(counts.max()), 1) if counts.numel() else 1  # no sets at all: one padded slot
    dense = values.new_zeros(num_sets, width, values.shape[-1]).index_put((owner, slot), values)
    mask = torch.zeros(num_sets, width, dtype=torch.bool, device=owner.device)
    return dense, mask.index_put((owner, slot), valid)
