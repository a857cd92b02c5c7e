"""What a zoo holds: counts, rejection reasons, families, datasets and property ranges.

Streams the zoo part by part and keeps only per-checkpoint scalars, so memory follows the number
of checkpoints, not their weights.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections import Counter, defaultdict
from typing import Any

from pipeline.zoo.checkpoint import BIASLESS_KINDS, Checkpoint, Rejection
from pipeline.zoo.listing import open_zoo, read_part

EXAMPLE_IDS = 3
ARCHITECTURES_SHOWN = 3
REASONS_SHOWN = 20
# Numbers in reasons vary per checkpoint (counts, shapes, rows); replacing them groups like reasons.
_NUMBER = re.compile(r"\b\d+(\.\d+)?\b")


def reason_group(reason: str) -> str:
    """A rejection reason with its numbers replaced by '#', so that like reasons group together."""
    return _NUMBER.sub("#", reason)


def _layer_spec(c: Checkpoint) -> list[dict]:
    return [
        {
            "name": layer.name,
            "kind": layer.kind,
            "weight_shape": list(layer.weight.shape),
            "bias_shape": None if layer.bias is None else list(layer.bias.shape),
        }
        for layer in c.layers
    ]


def summarize_zoo(uri: str, format: str = "auto", *, progress: bool = True, **options: Any) -> dict:
    """Read the whole zoo and describe it as a JSON-able dict.

    Keys: uri, format, options, fingerprint, listed, accepted (count), rejected ([{id, reason}]),
    rejection_reasons ([{reason, count, examples}]), families, datasets ({name: count}),
    properties ({name: {count, min, median, max}}). A tqdm bar on stderr when ``progress``.
    """
    from tqdm import tqdm

    listing = open_zoo(uri, format, **options)
    accepted = 0
    rejected: list[dict] = []
    families: dict[str, dict] = {}
    architectures: dict[str, Counter] = defaultdict(Counter)
    specs: dict[tuple, list[dict]] = {}
    datasets: Counter = Counter()
    values: dict[str, list[float]] = defaultdict(list)
    with tqdm(total=listing.num_listed, unit="ckpt", file=sys.stderr, disable=not progress) as bar:
        for part in listing.parts:
            for item in read_part(part):
                bar.update(1)
                if isinstance(item, Rejection):
                    rejected.append({"id": item.id, "reason": item.reason})
                    continue
                accepted += 1
                fam = families.setdefault(item.family, {"count": 0, "min_params": None, "max_params": None})
                fam["count"] += 1
                n = item.num_params
                fam["min_params"] = n if fam["min_params"] is None else min(fam["min_params"], n)
                fam["max_params"] = n if fam["max_params"] is None else max(fam["max_params"], n)
                spec = _layer_spec(item)
                key = tuple((s["kind"], tuple(s["weight_shape"]), s["bias_shape"] is not None) for s in spec)
                specs.setdefault(key, spec)
                architectures[item.family][(key, n)] += 1
                datasets[item.dataset] += 1
                for name, value in item.properties.items():
                    values[name].append(float(value))

    for family, fam in families.items():
        counts = architectures[family]
        fam["distinct_architectures"] = len(counts)
        fam["architectures"] = [
            {"count": count, "num_params": n, "layers": specs[key]}
            for (key, n), count in counts.most_common(ARCHITECTURES_SHOWN)
        ]

    groups: dict[str, dict] = {}
    for r in rejected:
        pattern = reason_group(r["reason"])
        group = groups.setdefault(pattern, {"count": 0, "examples": [], "reason": r["reason"]})
        if group["reason"] != r["reason"]:
            group["reason"] = pattern  # the numbers differ within the group: show the pattern
        group["count"] += 1
        if len(group["examples"]) < EXAMPLE_IDS:
            group["examples"].append(r["id"])
    return {
        "uri": uri,
        "format": listing.format,
        "options": listing.options,
        "fingerprint": listing.fingerprint,
        "listed": listing.num_listed,
        "accepted": accepted,
        "rejected": rejected,
        "rejection_reasons": sorted(groups.values(), key=lambda g: -g["count"]),
        "families": dict(sorted(families.items())),
        "datasets": dict(sorted(datasets.items())),
        "properties": {
            name: {"count": len(v), "min": min(v), "median": statistics.median(v), "max": max(v)}
            for name, v in sorted(values.items())
        },
    }


def format_summary(d: dict) -> str:
    """The summary as text for a terminal."""
    options = ", ".join(f"{k}={v}" for k, v in d["options"].items())
    lines = [
        f"zoo        {d['uri']}",
        f"format     {d['format']}" + (f" ({options})" if options else ""),
        f"checkpoints {d['listed']} listed: {d['accepted']} accepted, {len(d['rejected'])} rejected",
    ]
    if d["rejection_reasons"]:
        lines.append("rejected, by reason:")
        for g in d["rejection_reasons"][:REASONS_SHOWN]:
            more = ", …" if g["count"] > len(g["examples"]) else ""
            lines.append(f"  {g['count']:>6}  {g['reason']}")
            lines.append(f"          e.g. {', '.join(g['examples'])}{more}")
        if len(d["rejection_reasons"]) > REASONS_SHOWN:
            lines.append(f"  … {len(d['rejection_reasons']) - REASONS_SHOWN} more reasons (see --json)")
    lines.append("families:" + ("" if d["families"] else " (none accepted)"))
    for name, fam in d["families"].items():
        params = (
            f"{fam['min_params']} params"
            if fam["min_params"] == fam["max_params"]
            else f"{fam['min_params']}–{fam['max_params']} params"
        )
        lines.append(
            f"  {name}: {fam['count']} checkpoints, {params}, {fam['distinct_architectures']} architecture(s)"
        )
        for arch in fam["architectures"]:
            shapes = " → ".join(
                f"{s['kind']}{tuple(s['weight_shape'])}"
                + ("" if s["bias_shape"] or s["kind"] in BIASLESS_KINDS else " (no bias)")
                for s in arch["layers"]
            )
            lines.append(f"    {arch['count']:>6} × {arch['num_params']} params: {shapes}")
    lines.append("datasets:" + ("" if d["datasets"] else " (none accepted)"))
    lines += [f"  {name}: {count}" for name, count in d["datasets"].items()]
    if d["properties"]:
        lines.append("properties:            count        min     median        max")
        for name, p in d["properties"].items():
            lines.append(
                f"  {name:<18} {p['count']:>8} {p['min']:>10.4g} {p['median']:>10.4g} {p['max']:>10.4g}"
            )
    return "\n".join(lines)
