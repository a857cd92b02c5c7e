"""A reproducible corpus of damaged and hostile zoos in the three formats, for the reader fuzz test.

``write_corpus(root, seed)`` writes real zoos with each format's own writer (small random checkpoints
from ``conftest.make_checkpoint``), then damages files on disk: truncation, bit flips, wrong dtypes and
shapes in the .npy / safetensors / Parquet / pickle headers, NaN and Inf weights, headers that claim
terabytes, duplicated ids, ``../`` and absolute ids, names that are not UTF-8, pickles whose
``__reduce__`` runs code, links out of the zoo, empty files and folders where files belong. It returns
one ``Case`` per listed checkpoint (or per zoo, for damage that makes the whole zoo unusable), each
naming its mutation and the outcome a correct reader must give; it also writes them to ``cases.json``.

Per-checkpoint damage shares one large zoo per format (listed once); damage that makes a whole zoo
unusable gets a small zoo of its own. Links out of a zoo point into ``<root>/outside``, at files that
would be accepted if read, so reading them would show as an acceptance.

The same seed gives a byte-identical corpus (``corpus_digest``). The test reads ``SNE_FUZZ_SEED``
(default ``DEFAULT_SEED``); to try another corpus::

    SNE_FUZZ_SEED=12345 .venv/bin/python -m pytest -q -s tests/unit/test_fuzz_zoos.py

or write one to look at, with its case counts::

    .venv/bin/python tests/fuzz_zoos.py /tmp/fuzz-corpus --seed 12345
"""

from __future__ import annotations

import argparse
import builtins
import collections
import copy
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import stat
import struct
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from conftest import make_checkpoint

DEFAULT_SEED = 20240611
SEED_ENV = "SNE_FUZZ_SEED"
ACCEPTED, REJECTED, ZOO_ERROR = "accepted", "rejected", "zoo_error"
OUTCOMES = (ACCEPTED, REJECTED, ZOO_ERROR)
# A payload that runs touches "$SNE_FUZZ_MARKER.<style>", or MARKER_NAME in the working directory.
MARKER_ENV = "SNE_FUZZ_MARKER"
MARKER_NAME = "SNE-FUZZ-PAYLOAD-RAN"
OUTSIDE = "outside"
CASES_FILE = "cases.json"
# Terabyte-scale claims: far past any memory, so acting on one before checking it fails loudly.
HUGE = 2**40
# Fixed zip timestamps: the corpus must not depend on the clock.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# Decompression bombs' sizes: past the test's memory bound, quick to write (repeats deflate fast).
BOMB_FLOATS = 2**25
BOMB_BYTES = 96 * 2**20


@dataclass(frozen=True)
class Case:
    """One listed checkpoint (or one whole zoo, for ZOO_ERROR) and what a reader must make of it.

    ``reason`` is a regular expression the rejection reason (or the ZooError message) must match.
    """

    format: str
    zoo: str  # the zoo folder, relative to the corpus root, '/'-separated
    mutation: str
    expect: str
    id: str | None  # the id the listing shows; None for ZOO_ERROR
    reason: str = ""
    detail: str = ""


def printable(name: str) -> str:
    """How a name that is not valid UTF-8 (surrogate-escaped by the OS layer) appears in ids and reasons."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --- payloads -----------------------------------------------------------------------------------------


class _Payload:
    """Pickles as a call that leaves a marker file: proof, if it appears, that unpickling ran code."""

    def __init__(self, style: str):
        self.style = style

    def __reduce__(self):
        if self.style == "system":
            return (os.system, (f'touch "${{{MARKER_ENV}:-{MARKER_NAME}}}.system"',))
        if self.style == "open":
            return (builtins.open, (f"{MARKER_NAME}.open", "w"))
        if self.style == "exec":
            code = f"import os; open(os.environ.get({MARKER_ENV!r}, {MARKER_NAME!r}) + '.exec', 'w').close()"
            return (builtins.exec, (code,))
        raise ValueError(self.style)


PAYLOAD_STYLES = ("system", "open", "exec")


def payload_pickle(style: str, protocol: int = 2) -> bytes:
    """A bare pickle of a state dict whose weight, when unpickled, runs ``style``'s payload."""
    return pickle.dumps({"module_list.0.weight": _Payload(style)}, protocol=protocol)


def marker_paths(marker_base: str, cwd: str) -> list[str]:
    """Every file a payload of this corpus could create, given $SNE_FUZZ_MARKER and the working directory."""
    return [f"{marker_base}.{s}" for s in PAYLOAD_STYLES] + [
        os.path.join(cwd, f"{MARKER_NAME}.{s}") for s in PAYLOAD_STYLES
    ]


# --- file surgery -------------------------------------------------------------------------------------


def _flip_bit(path: Path, byte: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[byte] ^= 1 << bit
    path.write_bytes(bytes(data))


def _truncate(path: Path, length: int) -> None:
    path.write_bytes(path.read_bytes()[:length])


def _replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "part-0").write_bytes(b"a folder where a file belongs")


def _link(link: Path, target: Path) -> None:
    """A relative symbolic link, so that the corpus is the same wherever it is written."""
    link.symlink_to(os.path.relpath(target, link.parent))


def _move_out(root: Path, path: Path, name: str) -> None:
    """Move a (valid) file or folder to <root>/outside/<name> and leave a link to it in its place."""
    target = root / OUTSIDE / name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    _link(path, target)


def _rename_bytes(path: Path, new_name: bytes) -> Path:
    """Rename to a name that is not valid UTF-8; return the new path (surrogate-escaped)."""
    new = os.path.join(os.fsencode(path.parent), new_name)
    os.rename(os.fsencode(path), new)
    return Path(os.fsdecode(new))


def _deep_json(depth: int = 100_000) -> bytes:
    return b"[" * depth + b"]" * depth


def _checkpoint(seed: int, i: int, cid: str, family: str = "mlp", dataset: str = "digits"):
    c = make_checkpoint(i, family, dataset, seed=seed)
    c.id = cid
    return c


def _set_weight(c, rng: np.random.Generator, value: float) -> str:
    layer = int(rng.integers(len(c.layers)))
    flat = c.layers[layer].weight.reshape(-1)
    k = int(rng.integers(flat.size))
    flat[k] = value
    return f"layer {layer} weight[{k}] = {value}"


def _flipped_float32(raw: bytes, bit: int) -> float:
    word = int.from_bytes(raw, "little") ^ (1 << bit)
    return float(np.frombuffer(word.to_bytes(4, "little"), "<f4")[0])


# --- native -------------------------------------------------------------------------------------------


def _st_split(blob: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _st_join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def _rewrite_safetensors_header(path: Path, change) -> None:
    header, data = _st_split(path.read_bytes())
    change(header)
    path.write_bytes(_st_join(header, data))


def _first_tensor(header: dict) -> str:
    """The first weight matrix (its shape reversed is another shape) named in a safetensors header."""
    return next(k for k, v in header.items() if k != "__metadata__" and v["shape"] != v["shape"][::-1])


def _rewrite_manifest(path: Path, change_rows=None, schema_change=None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    rows = table.to_pylist()
    if change_rows:
        rows = change_rows(rows)
    schema = table.schema
    if schema_change:
        schema = schema_change(schema)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    path.write_bytes(buf.getvalue())


def _with_field(schema, name: str, new_type):
    import pyarrow as pa

    return pa.schema(
        [pa.field(f.name, new_type) if f.name == name else f for f in schema], metadata=schema.metadata
    )


def _without_field(schema, name: str):
    import pyarrow as pa

    return pa.schema([f for f in schema if f.name != name], metadata=schema.metadata)


def _set_layers(row: dict, change) -> dict:
    layers = json.loads(row["layers"])
    change(layers)
    return {**row, "layers": json.dumps(layers)}


NATIVE_CORRUPT = r"shards/.*\.safetensors is corrupt or truncated"
NATIVE_UNREADABLE = r"manifest part manifest/.*\.parquet is unreadable"
NATIVE_MALFORMED = r"manifest row in shard .* is malformed"


def _native_main(root: Path, seed: int) -> list[Case]:
    """One native zoo, one shard per case (whole-shard damage then touches one case only)."""
    from pipeline.zoo import native

    rng = np.random.default_rng([seed, 1])
    zrel = "native/main"
    zoo = root / zrel
    plan: list[tuple[str, object]] = []
    counts = {
        "valid": 20,
        "nan_weight": 6,
        "inf_weight": 6,
        "inf_accuracy": 2,
        "missing_accuracy": 2,
        "id_dotdot": 2,
        "id_absolute": 2,
        "truncate_shard": 15,
        "empty_shard": 2,
        "bitflip_shard_data": 20,
        "bitflip_shard_header_length": 10,
        "shard_header_dtype": 8,
        "shard_header_shape_permuted": 3,
        "shard_header_shape_count": 3,
        "shard_header_huge_shape": 2,
        "shard_header_huge_offsets": 2,
        "shard_header_terabyte_length": 1,
        "shard_header_not_json": 2,
        "shard_folder": 2,
        "shard_missing": 1,
        "shard_symlink_out": 2,
        "shard_symlink_inside": 1,
        "manifest_truncate": 8,
        "manifest_empty": 1,
        "manifest_footer_huge_length": 2,
        "manifest_bitflip_magic": 2,
        "manifest_folder": 1,
        "manifest_symlink_out": 1,
        "manifest_symlink_inside": 1,
        "manifest_huge_shape": 3,
        "manifest_layers_not_json": 2,
        "manifest_layers_deeply_nested": 1,
        "manifest_layers_wrong_kind": 2,
        "manifest_layer_dropped": 1,
        "manifest_num_params_wrong": 2,
        "manifest_sha256_changed": 2,
        "manifest_num_params_string": 1,
        "manifest_family_int": 1,
        "manifest_id_int": 1,
        "manifest_null_id": 1,
        "manifest_hyperparameters_not_object": 2,
        "manifest_missing_column": 1,
        "manifest_no_id_column": 1,
        "nonutf8_shard_name": 2,
        "nonutf8_shard_name_unreadable": 1,
    }
    for kind, n in counts.items():
        for _ in range(n):
            i = len(plan)
            c = _checkpoint(seed, i, f"n{i:04d}-{kind}", "cnn" if i % 5 == 0 else "mlp")
            plan.append((kind, c))
    details: dict[int, str] = {}
    for i, (kind, c) in enumerate(plan):
        if kind == "nan_weight":
            details[i] = _set_weight(c, rng, float("nan"))
        elif kind == "inf_weight":
            details[i] = _set_weight(c, rng, float(rng.choice([np.inf, -np.inf])))
        elif kind == "inf_accuracy":
            c.properties["test_accuracy"] = float("inf")
        elif kind == "missing_accuracy":
            del c.properties["test_accuracy"]
        elif kind == "id_dotdot":
            c.id = f"../../../etc/passwd-{i}"
        elif kind == "id_absolute":
            c.id = f"/etc/passwd-{i}"
    native.write_zoo(str(zoo), [c for _, c in plan], shard_size=1)

    cases: list[Case] = []

    def case(kind, expect, cid, reason="", detail=""):
        cases.append(Case("native", zrel, kind, expect, cid, reason, detail))

    for i, (kind, c) in enumerate(plan):
        shard = f"shard-{i:06d}"
        st = zoo / "shards" / f"{shard}.safetensors"
        mf = zoo / "manifest" / f"{shard}.parquet"
        size = st.stat().st_size
        header_len = int.from_bytes(st.read_bytes()[:8], "little")
        whole = f"{shard}/*"  # how a shard whose manifest cannot be read is listed
        if kind in ("valid", "id_dotdot", "id_absolute"):
            # Ids are labels, never paths: "../" in one reads nothing outside the zoo.
            case(kind, ACCEPTED, c.id)
        elif kind in ("nan_weight", "inf_weight"):
            case(kind, REJECTED, c.id, r"non-finite weight value", details[i])
        elif kind == "inf_accuracy":
            case(kind, REJECTED, c.id, r"property 'test_accuracy' is not finite")
        elif kind == "missing_accuracy":
            case(kind, REJECTED, c.id, r"missing property 'test_accuracy'")
        elif kind == "truncate_shard":
            n = int(rng.integers(1, size))
            _truncate(st, n)
            case(kind, REJECTED, c.id, NATIVE_CORRUPT, f"{n} of {size} bytes")
        elif kind == "empty_shard":
            _truncate(st, 0)
            case(kind, REJECTED, c.id, NATIVE_CORRUPT)
        elif kind == "bitflip_shard_data":
            byte, bit = int(rng.integers(8 + header_len, size)), int(rng.integers(8))
            _flip_bit(st, byte, bit)
            # Any changed tensor byte breaks the manifest's sha256, finite or not.
            case(kind, REJECTED, c.id, r"do not match the manifest's sha256", f"byte {byte} bit {bit}")
        elif kind == "bitflip_shard_header_length":
            byte, bit = int(rng.integers(8)), int(rng.integers(8))
            _flip_bit(st, byte, bit)
            claimed = header_len ^ (1 << (8 * byte + bit))
            case(kind, REJECTED, c.id, NATIVE_CORRUPT, f"header length {header_len} -> {claimed}")
        elif kind == "shard_header_dtype":
            dtype = ["I32", "F16", "F64", "BF16", "U8", "BOOL", "I64", "I32"][int(rng.integers(8))]
            name = [None]

            def change(h, dtype=dtype, name=name):
                name[0] = _first_tensor(h)
                h[name[0]]["dtype"] = dtype

            _rewrite_safetensors_header(st, change)
            # I32 has float32's size: the bytes load, reinterpreted, and only the digest tells.
            reason = r"do not match the manifest's sha256" if dtype == "I32" else NATIVE_CORRUPT
            case(kind, REJECTED, c.id, reason, f"{name[0]} dtype F32 -> {dtype}")
        elif kind == "shard_header_shape_permuted":

            def change(h):
                t = h[_first_tensor(h)]
                t["shape"] = list(reversed(t["shape"]))

            _rewrite_safetensors_header(st, change)
            case(kind, REJECTED, c.id, r"has shape .* the manifest says")
        elif kind == "shard_header_shape_count":

            def change(h):
                t = h[_first_tensor(h)]
                t["shape"] = [*t["shape"][:-1], t["shape"][-1] + 1]

            _rewrite_safetensors_header(st, change)
            case(kind, REJECTED, c.id, NATIVE_CORRUPT)
        elif kind == "shard_header_huge_shape":

            def change(h):
                h[_first_tensor(h)]["shape"] = [HUGE, HUGE]

            _rewrite_safetensors_header(st, change)
            case(kind, REJECTED, c.id, NATIVE_CORRUPT, "a tensor claims 2**80 elements")
        elif kind == "shard_header_huge_offsets":

            def change(h):
                h[_first_tensor(h)]["data_offsets"] = [0, HUGE]

            _rewrite_safetensors_header(st, change)
            case(kind, REJECTED, c.id, NATIVE_CORRUPT, "a tensor claims a terabyte of data")
        elif kind == "shard_header_terabyte_length":
            blob = st.read_bytes()
            st.write_bytes(HUGE.to_bytes(8, "little") + blob[8:])
            case(kind, REJECTED, c.id, NATIVE_CORRUPT, "the header claims a terabyte")
        elif kind == "shard_header_not_json":
            blob = bytearray(st.read_bytes())
            blob[8 : 8 + header_len] = bytes(rng.integers(0, 256, header_len, dtype=np.uint8))
            st.write_bytes(bytes(blob))
            case(kind, REJECTED, c.id, NATIVE_CORRUPT)
        elif kind == "shard_folder":
            _replace_with_folder(st)
            case(kind, REJECTED, c.id, r"shards/.*\.safetensors is a folder, not a file")
        elif kind == "shard_missing":
            st.unlink()
            case(kind, REJECTED, c.id, r"shards/.*\.safetensors is missing")
        elif kind == "shard_symlink_out":
            _move_out(root, st, f"native-{shard}.safetensors")
            # The listing names the shard, unread, as one entry.
            case(
                kind,
                REJECTED,
                whole,
                r"shards/.*\.safetensors is a symbolic link to .*, outside the zoo: not read",
            )
        elif kind == "shard_symlink_inside":
            kept = zoo / "kept" / f"{shard}.safetensors"
            kept.parent.mkdir(exist_ok=True)
            os.replace(st, kept)
            _link(st, kept)
            case(kind, ACCEPTED, c.id)
        elif kind == "manifest_truncate":
            n = int(rng.integers(1, mf.stat().st_size))
            _truncate(mf, n)
            case(kind, REJECTED, whole, NATIVE_UNREADABLE, f"{n} bytes kept")
        elif kind == "manifest_empty":
            _truncate(mf, 0)
            case(kind, REJECTED, whole, NATIVE_UNREADABLE)
        elif kind == "manifest_footer_huge_length":
            blob = bytearray(mf.read_bytes())
            blob[-8:-4] = struct.pack("<I", 0xFFFFFFF0)
            mf.write_bytes(bytes(blob))
            case(kind, REJECTED, whole, NATIVE_UNREADABLE, "the footer claims 4 GiB")
        elif kind == "manifest_bitflip_magic":
            _flip_bit(mf, mf.stat().st_size - 1 - int(rng.integers(4)), int(rng.integers(8)))
            case(kind, REJECTED, whole, NATIVE_UNREADABLE)
        elif kind == "manifest_folder":
            _replace_with_folder(mf)
            case(kind, REJECTED, whole, r"manifest/.*\.parquet is a folder, not a file")
        elif kind == "manifest_symlink_out":
            _move_out(root, mf, f"native-{shard}.parquet")
            case(kind, REJECTED, whole, r"is a symbolic link to .*, outside the zoo: not read")
        elif kind == "manifest_symlink_inside":
            kept = zoo / "kept" / f"{shard}.parquet"
            kept.parent.mkdir(exist_ok=True)
            os.replace(mf, kept)
            _link(mf, kept)
            case(kind, ACCEPTED, c.id)
        elif kind == "manifest_huge_shape":

            def change(rows):
                return [_set_layers(rows[0], lambda ls: ls[0].update(weight_shape=[HUGE, HUGE]))]

            _rewrite_manifest(mf, change)
            case(kind, REJECTED, c.id, r"has shape .* the manifest says \(1099511627776, 1099511627776\)")
        elif kind == "manifest_layers_not_json":
            _rewrite_manifest(mf, lambda rows: [{**rows[0], "layers": '[{"name": "layers.0", "kind'}])
            case(kind, REJECTED, c.id, NATIVE_MALFORMED)
        elif kind == "manifest_layers_deeply_nested":
            _rewrite_manifest(mf, lambda rows: [{**rows[0], "layers": _deep_json().decode()}])
            case(kind, REJECTED, c.id, NATIVE_MALFORMED + r": nested too deeply")
        elif kind == "manifest_layers_wrong_kind":
            kind_to = ["attention", "conv1d"][len([x for x in cases if x.mutation == kind]) % 2]

            def change(rows, kind_to=kind_to):
                return [_set_layers(rows[0], lambda ls: ls[-1].update(kind=kind_to))]

            _rewrite_manifest(mf, change)
            reason = r"unknown kind 'attention'" if kind_to == "attention" else r"conv1d weight must have 3"
            case(kind, REJECTED, c.id, reason)
        elif kind == "manifest_layer_dropped":
            _rewrite_manifest(mf, lambda rows: [_set_layers(rows[0], lambda ls: ls.pop())])
            case(kind, REJECTED, c.id, r"do not match the manifest's sha256")
        elif kind == "manifest_num_params_wrong":
            wrong = [c.num_params + 1, 2**62][len([x for x in cases if x.mutation == kind]) % 2]
            _rewrite_manifest(mf, lambda rows, w=wrong: [{**rows[0], "num_params": w}])
            case(kind, REJECTED, c.id, rf"contradicts the manifest's {wrong}")
        elif kind == "manifest_sha256_changed":
            _rewrite_manifest(mf, lambda rows: [{**rows[0], "sha256": "0" * 64}])
            case(kind, REJECTED, c.id, r"do not match the manifest's sha256")
        elif kind == "manifest_num_params_string":
            import pyarrow as pa

            _rewrite_manifest(
                mf,
                lambda rows: [{**rows[0], "num_params": str(rows[0]["num_params"])}],
                lambda s: _with_field(s, "num_params", pa.string()),
            )
            case(kind, REJECTED, c.id, NATIVE_MALFORMED + r".*num_params")
        elif kind == "manifest_family_int":
            import pyarrow as pa

            _rewrite_manifest(
                mf, lambda rows: [{**rows[0], "family": 7}], lambda s: _with_field(s, "family", pa.int64())
            )
            case(kind, REJECTED, c.id, NATIVE_MALFORMED + r".*family")
        elif kind == "manifest_id_int":
            import pyarrow as pa

            _rewrite_manifest(
                mf, lambda rows, i=i: [{**rows[0], "id": i}], lambda s: _with_field(s, "id", pa.int64())
            )
            case(kind, REJECTED, whole, NATIVE_UNREADABLE + r": column id holds int64, not strings")
        elif kind == "manifest_null_id":
            _rewrite_manifest(mf, lambda rows: [{**rows[0], "id": None}])
            case(kind, REJECTED, whole, NATIVE_UNREADABLE + r": 1 row\(s\) without an id")
        elif kind == "manifest_hyperparameters_not_object":
            value = ["[1, 2]", "7"][len([x for x in cases if x.mutation == kind]) % 2]
            _rewrite_manifest(mf, lambda rows, v=value: [{**rows[0], "hyperparameters": v}])
            case(kind, REJECTED, c.id, NATIVE_MALFORMED + r".*hyperparameters")
        elif kind == "manifest_missing_column":
            _rewrite_manifest(
                mf,
                lambda rows: [{k: v for k, v in rows[0].items() if k != "family"}],
                lambda s: _without_field(s, "family"),
            )
            case(kind, REJECTED, c.id, NATIVE_MALFORMED + r".*family")
        elif kind == "manifest_no_id_column":
            _rewrite_manifest(
                mf,
                lambda rows: [{k: v for k, v in rows[0].items() if k != "id"}],
                lambda s: _without_field(s, "id"),
            )
            case(kind, REJECTED, whole, NATIVE_UNREADABLE)
        elif kind.startswith("nonutf8_shard_name"):
            name = b"\xff\xfe-" + shard.encode()
            if kind.endswith("unreadable"):
                _truncate(mf, mf.stat().st_size // 2)
            new = _rename_bytes(mf, name + b".parquet")
            _rename_bytes(st, name + b".safetensors")
            shown = printable(new.name[: -len(".parquet")])
            if kind.endswith("unreadable"):
                case(
                    kind,
                    REJECTED,
                    f"{shown}/*",
                    r"manifest part manifest/\\xff\\xfe-.*\.parquet is unreadable",
                )
            else:
                case(kind, ACCEPTED, c.id)  # ids come from the manifest, not from the file name
        else:
            raise AssertionError(kind)

    # Duplicated ids: across shards (a later shard repeats an earlier id) and within one manifest.
    originals = [c for kind, c in plan if kind == "valid"]
    for k in range(4):
        dup = copy.deepcopy(originals[k])
        native.write_shard(str(zoo), f"zz-duplicate-{k}", [dup])
        case("duplicate_id_across_shards", REJECTED, dup.id, r"duplicate id \(first listed in shard shard-")
    for k in range(3):
        c = _checkpoint(seed, 900 + k, f"n-dup-in-manifest-{k}")
        native.write_shard(str(zoo), f"zz-repeated-row-{k}", [c])
        mf = zoo / "manifest" / f"zz-repeated-row-{k}.parquet"
        # The second row for the id is malformed: the listing accepts the first, so it must be read from it.
        _rewrite_manifest(mf, lambda rows: rows + [{**rows[0], "layers": "[{"}])
        case("duplicate_id_in_manifest", ACCEPTED, c.id, detail="the first of two rows for one id")
        case("duplicate_id_in_manifest", REJECTED, c.id, r"duplicate id \(first listed in shard zz-repeated")
    # Shards of several checkpoints, untouched.
    for k in range(2):
        group = [_checkpoint(seed, 950 + 4 * k + j, f"n-multi-{k}-{j}") for j in range(4)]
        native.write_shard(str(zoo), f"multi-{k}", group)
        for c in group:
            case("valid", ACCEPTED, c.id, detail="a shard of four")
    return cases


def _native_whole_zoo(root: Path, seed: int) -> list[Case]:
    """Damage to zoo-wide files: each in a zoo of its own."""
    from pipeline.zoo import native

    cases: list[Case] = []
    mutations = {
        "zoo_json_missing": (ZOO_ERROR, r"zoo\.json is missing"),
        "zoo_json_empty": (ZOO_ERROR, r"zoo\.json is not valid JSON"),
        "zoo_json_truncated": (ZOO_ERROR, r"zoo\.json is not valid JSON"),
        "zoo_json_not_utf8": (ZOO_ERROR, r"zoo\.json is not valid JSON"),
        "zoo_json_wrong_format": (ZOO_ERROR, r"zoo\.json names format"),
        "zoo_json_unknown_version": (ZOO_ERROR, r"native format version 2 is not supported"),
        "zoo_json_version_string": (ZOO_ERROR, r"native format version '1' is not supported"),
        "zoo_json_array": (ZOO_ERROR, r"zoo\.json names format \[\]"),
        "zoo_json_deeply_nested": (ZOO_ERROR, r"zoo\.json is not valid JSON \(nested too deeply\)"),
        "zoo_json_folder": (ZOO_ERROR, r"zoo\.json is a folder, not a file"),
        "zoo_json_symlink_out": (ZOO_ERROR, r"zoo\.json is a symbolic link to .*, outside the zoo: not read"),
        "manifest_dir_missing": (ZOO_ERROR, r"has no manifest parts"),
        "manifest_dir_is_file": (ZOO_ERROR, r"has no manifest parts"),
        "manifest_dir_symlink_out": (
            ZOO_ERROR,
            r"manifest is a symbolic link to .*, outside the zoo: not read",
        ),
        "manifests_without_rows": (ZOO_ERROR, r"lists no checkpoints"),
        "shards_dir_symlink_out": (REJECTED, r"shards is a symbolic link to .*, outside the zoo: not read"),
        "shards_dir_is_file": (REJECTED, r"shards/.*\.safetensors is missing"),
    }
    for n, (kind, (expect, reason)) in enumerate(mutations.items()):
        zrel = f"native/zoo-{n:02d}-{kind}"
        zoo = root / zrel
        checkpoints = [_checkpoint(seed, 2000 + 2 * n + j, f"w{n:02d}-{j}") for j in range(2)]
        native.write_zoo(str(zoo), checkpoints)
        zj = zoo / "zoo.json"
        if kind == "zoo_json_missing":
            zj.unlink()
        elif kind == "zoo_json_empty":
            _truncate(zj, 0)
        elif kind == "zoo_json_truncated":
            _truncate(zj, zj.stat().st_size // 2)
        elif kind == "zoo_json_not_utf8":
            zj.write_bytes(b'{"format": "sne-native\xff\xfe", "version": 1}')
        elif kind == "zoo_json_wrong_format":
            zj.write_text(json.dumps({"format": "pickle-zoo", "version": 1}))
        elif kind == "zoo_json_unknown_version":
            zj.write_text(json.dumps({"format": "sne-native", "version": 2}))
        elif kind == "zoo_json_version_string":
            zj.write_text(json.dumps({"format": "sne-native", "version": "1"}))
        elif kind == "zoo_json_array":
            zj.write_text("[]")
        elif kind == "zoo_json_deeply_nested":
            zj.write_bytes(_deep_json())
        elif kind == "zoo_json_folder":
            _replace_with_folder(zj)
        elif kind == "zoo_json_symlink_out":
            _move_out(root, zj, f"{zrel.replace('/', '-')}-zoo.json")
        elif kind == "manifest_dir_missing":
            shutil.rmtree(zoo / "manifest")
        elif kind == "manifest_dir_is_file":
            shutil.rmtree(zoo / "manifest")
            (zoo / "manifest").write_bytes(b"not a folder")
        elif kind == "manifest_dir_symlink_out":
            _move_out(root, zoo / "manifest", f"{zrel.replace('/', '-')}-manifest")
        elif kind == "manifests_without_rows":
            _rewrite_manifest(zoo / "manifest" / "shard-000000.parquet", lambda rows: [])
        elif kind == "shards_dir_symlink_out":
            _move_out(root, zoo / "shards", f"{zrel.replace('/', '-')}-shards")
        elif kind == "shards_dir_is_file":
            shutil.rmtree(zoo / "shards")
            (zoo / "shards").write_bytes(b"not a folder")
        if expect == ZOO_ERROR:
            cases.append(Case("native", zrel, kind, ZOO_ERROR, None, reason))
        elif kind == "shards_dir_symlink_out":  # the listing names the one shard, unread, as one entry
            cases.append(Case("native", zrel, kind, expect, "shard-000000/*", reason))
        else:
            cases += [Case("native", zrel, kind, expect, c.id, reason) for c in checkpoints]
    return cases


# --- smallcnnzoo --------------------------------------------------------------------------------------


def _npy_parts(path: Path) -> tuple[dict, int, bytes]:
    """(header dict, data offset, raw bytes) of a version 1.0 .npy file."""
    blob = path.read_bytes()
    header_len = int.from_bytes(blob[8:10], "little")
    text = blob[10 : 10 + header_len].decode("latin1")
    import ast

    return ast.literal_eval(text), 10 + header_len, blob


def _npy_header(d: dict, version: tuple[int, int] = (1, 0)) -> bytes:
    buf = io.BytesIO()
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, d)
    else:
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def _rewrite_npy_header(path: Path, **changes) -> None:
    header, offset, blob = _npy_parts(path)
    path.write_bytes(_npy_header({**header, **changes}) + blob[offset:])


def _smallcnn_checkpoints(seed: int, first: int, n: int, dataset: str, family: str = "mlp") -> list:
    out = []
    for j in range(n):
        c = _checkpoint(seed, first + j, f"{dataset}-{j}", family, dataset)
        c.hyperparameters["modeldir"] = f"run-{first + j:05d}"
        out.append(c)
    return out


def _sid(dataset: str, c) -> str:
    return f"{dataset}/{c.hyperparameters['modeldir']}/step86"


def _row_finite(row: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(row.astype(np.float32))))


def _smallcnnzoo_main(root: Path, seed: int) -> list[Case]:
    """One smallcnnzoo zoo of dataset folders: per-row damage, and folder damage that leaves rows readable."""
    from pipeline.zoo import smallcnnzoo

    rng = np.random.default_rng([seed, 2])
    zrel = "smallcnnzoo/main"
    zoo = root / zrel
    cases: list[Case] = []

    def case(kind, expect, cid, reason="", detail=""):
        cases.append(Case("smallcnnzoo", zrel, kind, expect, cid, reason, detail))

    # Folder "rows": one case per row.
    counts = {
        "valid": 16,
        "bitflip_weight": 40,
        "nan_weight": 5,
        "inf_weight": 5,
        "nan_accuracy": 3,
        "inf_accuracy": 3,
        "missing_train_accuracy": 2,
        "modeldir_dotdot": 2,
        "modeldir_absolute": 2,
        "duplicate_modeldir": 4,
    }
    kinds = [k for k, n in counts.items() for _ in range(n)]
    items = _smallcnn_checkpoints(seed, 3000, len(kinds), "rows")
    valid_modeldirs = [
        c.hyperparameters["modeldir"] for c, k in zip(items, kinds, strict=True) if k == "valid"
    ]
    duplicates = 0
    for c, kind in zip(items, kinds, strict=True):
        if kind == "nan_accuracy":
            c.properties["test_accuracy"] = None
        elif kind == "inf_accuracy":
            c.properties["test_accuracy"] = float(rng.choice([np.inf, -np.inf]))
        elif kind == "missing_train_accuracy":
            del c.properties["train_accuracy"]
        elif kind == "modeldir_dotdot":
            c.hyperparameters["modeldir"] = f"../../../etc/passwd-{c.id}"
        elif kind == "modeldir_absolute":
            c.hyperparameters["modeldir"] = f"/etc/passwd-{c.id}"
        elif kind == "duplicate_modeldir":
            # Valid rows come first: the repeated id is listed after its original.
            c.hyperparameters["modeldir"] = valid_modeldirs[duplicates]
            duplicates += 1
    folder = zoo / "rows"
    smallcnnzoo.write_zoo(str(folder), items)
    weights = folder / "weights.npy"
    header, offset, blob = _npy_parts(weights)
    cols = header["shape"][1]
    data = bytearray(blob)
    for r, (c, kind) in enumerate(zip(items, kinds, strict=True)):
        cid = _sid("rows", c)
        at = offset + 4 * r * cols
        if kind in ("valid", "modeldir_dotdot", "modeldir_absolute"):
            case(kind, ACCEPTED, cid)
        elif kind == "bitflip_weight":
            col, bit = int(rng.integers(cols)), int(rng.integers(32))
            raw = bytes(data[at + 4 * col : at + 4 * col + 4])
            value = _flipped_float32(raw, bit)
            data[at + 4 * col + bit // 8] ^= 1 << (bit % 8)
            # No checksum in this format: a flip that leaves a finite number is a valid checkpoint.
            if math.isfinite(value):
                case(kind, ACCEPTED, cid, detail=f"column {col} bit {bit} -> {value!r}")
            else:
                case(kind, REJECTED, cid, r"non-finite weight value", f"column {col} bit {bit} -> {value!r}")
        elif kind in ("nan_weight", "inf_weight"):
            col = int(rng.integers(cols))
            value = np.float32(np.nan) if kind == "nan_weight" else np.float32(rng.choice([np.inf, -np.inf]))
            data[at + 4 * col : at + 4 * col + 4] = value.astype("<f4").tobytes()
            case(kind, REJECTED, cid, r"non-finite (weight|bias) value", f"column {col}")
        elif kind in ("nan_accuracy",):
            case(kind, REJECTED, cid, r"missing property 'test_accuracy'")
        elif kind == "inf_accuracy":
            case(kind, REJECTED, cid, r"property 'test_accuracy' is not finite")
        elif kind == "missing_train_accuracy":
            case(kind, REJECTED, cid, r"missing property 'train_accuracy'")
        elif kind == "duplicate_modeldir":
            case(kind, REJECTED, cid, r"duplicate id \(first listed in .*/rows row \d+\)")
    weights.write_bytes(bytes(data))

    # Truncated weights.npy: rows wholly before the cut are intact and accepted, the rest rejected.
    for k in range(10):
        name = f"trunc-{k:02d}"
        items = _smallcnn_checkpoints(seed, 3200 + 4 * k, 4, name)
        smallcnnzoo.write_zoo(str(zoo / name), items)
        weights = zoo / name / "weights.npy"
        header, offset, blob = _npy_parts(weights)
        row_bytes = 4 * header["shape"][1]
        cut = int(rng.integers(offset + 1, len(blob)))
        _truncate(weights, cut)
        for r, c in enumerate(items):
            intact = offset + (r + 1) * row_bytes <= cut
            expect, reason = (ACCEPTED, "") if intact else (REJECTED, r"weights\.npy is truncated")
            case("truncate_weights", expect, _sid(name, c), reason, f"cut at byte {cut}, row {r}")

    # A header that relabels the bytes: the values change, the file stays a readable .npy.
    for name, descr, kind in (
        ("big-endian", ">f4", "npy_big_endian"),
        ("relabelled-f8", "<f8", "npy_f4_relabelled_f8"),
    ):
        items = _smallcnn_checkpoints(seed, 3300 + len(cases), 4, name)
        smallcnnzoo.write_zoo(str(zoo / name), items)
        weights = zoo / name / "weights.npy"
        header, offset, blob = _npy_parts(weights)
        _rewrite_npy_header(weights, descr=descr)
        cols = header["shape"][1]
        itemsize = np.dtype(descr).itemsize
        for r, c in enumerate(items):
            lo = offset + r * cols * itemsize
            if lo + cols * itemsize > len(blob):
                # Half the rows of a relabelled float64 file lie past its end: read as a truncation.
                case(kind, REJECTED, _sid(name, c), r"weights\.npy is truncated")
                continue
            row = np.frombuffer(blob, descr, count=cols, offset=lo)
            with np.errstate(over="ignore"):
                finite = _row_finite(row)
            # Byte order and float width are legal .npy choices and no checksum exists to catch the change:
            # a row whose reinterpreted values are all finite is accepted (garbage, but undetectable).
            if finite:
                case(kind, ACCEPTED, _sid(name, c), detail="reinterpreted bytes, all finite")
            else:
                case(kind, REJECTED, _sid(name, c), r"non-finite")

    # layout.csv and the .npy header both claim a terabyte-wide row: every row lies past the file's end.
    name = "huge-claims"
    items = _smallcnn_checkpoints(seed, 3400, 3, name)
    smallcnnzoo.write_zoo(str(zoo / name), items)
    layout = (zoo / name / "layout.csv").read_text().splitlines()
    last = layout[-1].split(",", 4)  # the last dense kernel: varname,start,end,size,"(in, out)"
    start, out_units = int(last[1]), int(last[4].strip('"()').split(",")[1])
    size = HUGE * out_units
    layout[-1] = f'{last[0]},{start},{start + size},{size},"({HUGE}, {out_units})"'
    (zoo / name / "layout.csv").write_text("\n".join(layout) + "\n")
    _rewrite_npy_header(zoo / name / "weights.npy", shape=(3, start + size))
    for c in items:
        case("layout_and_npy_claim_huge_rows", REJECTED, _sid(name, c), r"weights\.npy is truncated")

    # Names that are not UTF-8: with config.dataset the ids never use the folder name; without it
    # they do, in a printable form.
    for k, keep_dataset in enumerate((True, False)):
        name = f"utf8-{k}"
        items = _smallcnn_checkpoints(seed, 3500 + 3 * k, 3, name)
        smallcnnzoo.write_zoo(str(zoo / name), items)
        if not keep_dataset:
            metrics = zoo / name / "metrics.csv.gz"
            import pandas as pd

            frame = pd.read_csv(metrics, index_col=0).drop(columns=["config.dataset"])
            metrics.write_bytes(gzip.compress(frame.to_csv().encode(), mtime=0))
        new = _rename_bytes(zoo / name, b"\xff\xfe-" + name.encode())
        for c in items:
            dataset = name if keep_dataset else printable(new.name)
            case("nonutf8_folder_name", ACCEPTED, _sid(dataset, c))

    # Rows repeating another folder's ids (the folder sorts after "rows").
    name = "zz-duplicates"
    items = _smallcnn_checkpoints(seed, 3000, 3, "rows")
    smallcnnzoo.write_zoo(str(zoo / name), items)
    for c in items:
        case(
            "duplicate_id_across_folders",
            REJECTED,
            _sid("rows", c),
            r"duplicate id \(first listed in .*/rows row",
        )
    return cases


def _gzip_bomb(csv_text: bytes, size: int) -> bytes:
    """The CSV with its last row repeated to ``size`` bytes, gzipped (a few hundred KB; mtime 0)."""
    import zlib

    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    row = csv_text.splitlines(keepends=True)[-1]
    block = row * (2**20 // len(row))
    out = [packer.compress(csv_text)]
    out += [packer.compress(block) for _ in range(size // len(block))]
    return b"".join([*out, packer.flush()])


def _smallcnnzoo_whole_zoo(root: Path, seed: int) -> list[Case]:
    """Damage to a dataset folder's three files: the zoo cannot be listed, each in a zoo of its own."""
    from pipeline.zoo import smallcnnzoo

    rng = np.random.default_rng([seed, 3])
    cases: list[Case] = []
    header_errors = r"weights\.npy: (not a \.npy file|unreadable \.npy header|expected a 2-D C-order float)"
    plan = [
        ("npy_empty", r"weights\.npy: not a \.npy file"),
        *[("npy_truncated_header", header_errors)] * 4,
        ("npy_bitflip_magic", r"weights\.npy: not a \.npy file"),
        ("npy_dtype_int", r"expected a 2-D C-order float matrix, got .*dtype int32"),
        ("npy_dtype_complex", r"expected a 2-D C-order float matrix, got .*dtype complex64"),
        ("npy_dtype_bool", r"expected a 2-D C-order float matrix, got .*dtype bool"),
        ("npy_dtype_object", r"expected a 2-D C-order float matrix, got .*dtype object"),
        ("npy_dtype_f2", r"weights\.npy holds \d+ bytes after its header, its header claims \d+"),
        ("npy_shape_rows_huge", r"weights\.npy has 1099511627776 rows but metrics\.csv\.gz has 2"),
        ("npy_shape_cols_huge", r"weights\.npy has 1099511627776 columns but layout\.csv ends"),
        ("npy_shape_3d", r"expected a 2-D C-order float matrix"),
        ("npy_fortran_order", r"fortran_order=True"),
        ("npy_header_length_4gib", r"weights\.npy: its \.npy header claims 4294967280 bytes"),
        ("npy_header_not_a_dict", r"weights\.npy: unreadable \.npy header"),
        ("npy_folder", r"weights\.npy is a folder, not a file"),
        ("npy_symlink_out", r"weights\.npy is a symbolic link to .*, outside the zoo: not read"),
        ("layout_empty", r"layout\.csv: missing column"),
        *[("layout_truncated", r"layout\.csv")] * 6,
        ("layout_short_row", r"layout\.csv line \d+ .*: (unreadable value|missing value)"),
        ("layout_not_utf8", r"layout\.csv is not UTF-8 text"),
        ("layout_shape_not_a_tuple", r"layout\.csv line \d+ .*unreadable value"),
        ("layout_shape_huge_literal", r"layout\.csv line \d+ .*unreadable value"),
        ("layout_shape_deeply_nested", r"layout\.csv line \d+ .*unreadable value"),
        ("layout_gap", r"expected \d+ \(gap or overlap\)"),
        ("layout_unknown_variable", r"unsupported variable 'gamma'"),
        ("layout_folder", r"layout\.csv is a folder, not a file"),
        ("layout_symlink_out", r"layout\.csv is a symbolic link to .*, outside the zoo: not read"),
        ("metrics_empty", r"metrics\.csv\.gz: unreadable"),
        *[("metrics_truncated", r"metrics\.csv\.gz: unreadable")] * 3,
        ("metrics_not_gzip", r"metrics\.csv\.gz: unreadable"),
        (
            "metrics_gzip_bomb",
            r"metrics\.csv\.gz: inflates past 67108864 bytes from \d+ \(a decompression bomb",
        ),
        ("metrics_not_utf8", r"metrics\.csv\.gz: unreadable"),
        ("metrics_missing_modeldir", r"metrics\.csv\.gz: missing column\(s\) modeldir"),
        ("metrics_row_dropped", r"weights\.npy has 2 rows but metrics\.csv\.gz has 1"),
        ("metrics_folder", r"metrics\.csv\.gz is a folder, not a file"),
        ("metrics_symlink_out", r"metrics\.csv\.gz is a symbolic link to .*, outside the zoo: not read"),
        ("dataset_folder_symlink_out", r"is a symbolic link to .*, outside the zoo: not read"),
        ("no_final_step", r"empty zoo: .* has no rows with step 86"),
    ]
    for n, (kind, reason) in enumerate(plan):
        zrel = f"smallcnnzoo/zoo-{n:02d}-{kind}"
        zoo = root / zrel
        folder = zoo / "ds" if kind == "dataset_folder_symlink_out" else zoo
        items = _smallcnn_checkpoints(seed, 4000 + 2 * n, 2, f"z{n:02d}")
        if kind == "no_final_step":
            for c in items:
                c.hyperparameters["step"] = 20
        smallcnnzoo.write_zoo(str(folder), items)
        weights, layout, metrics = folder / "weights.npy", folder / "layout.csv", folder / "metrics.csv.gz"
        header, offset, blob = _npy_parts(weights)
        detail = ""
        if kind == "npy_empty":
            _truncate(weights, 0)
        elif kind == "npy_truncated_header":
            cut = int(rng.integers(1, offset))
            _truncate(weights, cut)
            detail = f"{cut} of {offset} header bytes kept"
        elif kind == "npy_bitflip_magic":
            _flip_bit(weights, int(rng.integers(6)), int(rng.integers(8)))
        elif kind.startswith("npy_dtype_"):
            descr = {"int": "<i4", "complex": "<c8", "bool": "|b1", "object": "|O", "f2": "<f2"}[kind[10:]]
            _rewrite_npy_header(weights, descr=descr)
        elif kind == "npy_shape_rows_huge":
            _rewrite_npy_header(weights, shape=(HUGE, header["shape"][1]))
        elif kind == "npy_shape_cols_huge":
            _rewrite_npy_header(weights, shape=(2, HUGE))
        elif kind == "npy_shape_3d":
            _rewrite_npy_header(weights, shape=(2, header["shape"][1], 1))
        elif kind == "npy_fortran_order":
            _rewrite_npy_header(weights, fortran_order=True)
        elif kind == "npy_header_length_4gib":
            # A version 2.0 header whose 4-byte length field claims 4 GiB; the rest is the real header.
            weights.write_bytes(b"\x93NUMPY\x02\x00" + struct.pack("<I", 0xFFFFFFF0) + blob[10:])
        elif kind == "npy_header_not_a_dict":
            text = b"[1, 2, 3]"
            text += b" " * (offset - 10 - len(text) - 1) + b"\n"
            weights.write_bytes(blob[:10] + text + blob[offset:])
        elif kind in ("npy_folder", "layout_folder", "metrics_folder"):
            _replace_with_folder({"npy": weights, "layout": layout, "metrics": metrics}[kind.split("_")[0]])
        elif kind in ("npy_symlink_out", "layout_symlink_out", "metrics_symlink_out"):
            path = {"npy": weights, "layout": layout, "metrics": metrics}[kind.split("_")[0]]
            _move_out(root, path, f"{zrel.replace('/', '-')}-{path.name}")
        elif kind == "layout_empty":
            _truncate(layout, 0)
        elif kind == "layout_truncated":
            # The cut takes at least the last ")": one that only loses the closing quote and newline leaves
            # a file the csv module still reads whole (legitimately valid, so not a case here).
            cut = int(rng.integers(1, layout.read_bytes().rindex(b")") + 1))
            _truncate(layout, cut)
            detail = f"{cut} bytes kept"
        elif kind == "layout_short_row":
            lines = layout.read_text().splitlines()
            lines[2] = ",".join(lines[2].split(",")[:2])  # a row cut after its start index
            layout.write_text("\n".join(lines) + "\n")
        elif kind == "layout_not_utf8":
            layout.write_bytes(layout.read_bytes().replace(b"sequential", b"sequ\xe9ntial", 1))
        elif kind.startswith("layout_shape_") or kind in ("layout_gap", "layout_unknown_variable"):
            lines = layout.read_text().splitlines()
            fields = lines[1].split(",", 4)
            if kind == "layout_shape_not_a_tuple":
                fields[4] = '"[16, 12]x"'
            elif kind == "layout_shape_huge_literal":
                fields[4] = '"(' + "9" * 5000 + ',)"'
            elif kind == "layout_shape_deeply_nested":
                fields[4] = '"' + "(" * 1000 + ")" * 1000 + '"'
            elif kind == "layout_gap":
                fields[1], fields[2] = str(int(fields[1]) + 1), str(int(fields[2]) + 1)
            elif kind == "layout_unknown_variable":
                fields[0] = fields[0].replace("/bias:0", "/gamma:0").replace("/kernel:0", "/gamma:0")
            lines[1] = ",".join(fields)
            layout.write_text("\n".join(lines) + "\n")
        elif kind == "metrics_empty":
            _truncate(metrics, 0)
        elif kind == "metrics_truncated":
            cut = int(rng.integers(1, metrics.stat().st_size))
            _truncate(metrics, cut)
            detail = f"{cut} bytes kept"
        elif kind == "metrics_not_gzip":
            metrics.write_bytes(gzip.decompress(metrics.read_bytes()))
        elif kind == "metrics_gzip_bomb":
            metrics.write_bytes(_gzip_bomb(gzip.decompress(metrics.read_bytes()), BOMB_BYTES))
            detail = f"{BOMB_BYTES} bytes of CSV rows"
        elif kind == "metrics_not_utf8":
            text = gzip.decompress(metrics.read_bytes()).replace(b"run-", b"r\xffn-", 1)
            metrics.write_bytes(gzip.compress(text, mtime=0))
        elif kind in ("metrics_missing_modeldir", "metrics_row_dropped"):
            import pandas as pd

            frame = pd.read_csv(metrics, index_col=0)
            frame = frame.drop(columns=["modeldir"]) if kind == "metrics_missing_modeldir" else frame.iloc[:1]
            metrics.write_bytes(gzip.compress(frame.to_csv().encode(), mtime=0))
        elif kind == "dataset_folder_symlink_out":
            smallcnnzoo.write_zoo(str(zoo / "away"), _smallcnn_checkpoints(seed, 4900, 2, "away"))
            _move_out(root, zoo / "away", f"{zrel.replace('/', '-')}-away")
        cases.append(Case("smallcnnzoo", zrel, kind, ZOO_ERROR, None, reason, detail))
    return cases


# --- modelzoos ----------------------------------------------------------------------------------------


def _zip_records(blob: bytes) -> dict[str, tuple[int, int]]:
    """{record name: (offset of its data in the file, size)} of a stored (uncompressed) zip."""
    out = {}
    for info in zipfile.ZipFile(io.BytesIO(blob)).infolist():
        h = info.header_offset
        name_len, extra_len = struct.unpack("<HH", blob[h + 26 : h + 30])
        out[info.filename] = (h + 30 + name_len + extra_len, info.file_size)
    return out


def _rezip(blob: bytes, replace: dict[str, bytes], compress: bool = False) -> bytes:
    """The zip with some records' contents replaced (fixed timestamps: deterministic)."""
    src = zipfile.ZipFile(io.BytesIO(blob))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            short = info.filename.split("/", 1)[1]
            data = replace.get(short, src.read(info.filename))
            entry = zipfile.ZipInfo(info.filename, ZIP_DATE)
            entry.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            z.writestr(entry, data)
    return out.getvalue()


class _StorageRef:
    """Stands for a storage record in a hand-made torch pickle; ``numel`` is what the pickle claims."""

    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _TensorClaim:
    """Pickles as torch's own tensor-rebuild call, with whatever size and stride it is given."""

    def __init__(self, ref: _StorageRef, size: tuple, stride: tuple):
        self.ref, self.size, self.stride = ref, size, stride

    def __reduce__(self):
        import torch

        return (
            torch._utils._rebuild_tensor_v2,
            (self.ref, 0, self.size, self.stride, False, collections.OrderedDict()),
        )


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            import torch

            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def _torch_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _claimed_state(state: dict) -> dict:
    """The state dict as tensor claims over torch.save's records (storage keys "0", "1", … in order)."""
    return {
        name: _TensorClaim(_StorageRef(str(k), t.numel()), tuple(t.shape), t.stride())
        for k, (name, t) in enumerate(state.items())
    }


def _zip_bomb(blob: bytes, floats: int) -> bytes:
    """torch.save's zip with the first weight claiming ``floats`` zeros, stored deflated (a few KB)."""
    cols = 1024
    claims = _claimed_state(_state_of(blob))
    first = next(iter(claims))
    claims[first] = _TensorClaim(_StorageRef("0", floats), (floats // cols, cols), (cols, 1))
    src = zipfile.ZipFile(io.BytesIO(blob))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            entry = zipfile.ZipInfo(info.filename, ZIP_DATE)
            entry.compress_type = zipfile.ZIP_DEFLATED
            if info.filename.endswith("/data/0"):
                with z.open(entry, "w", force_zip64=True) as f:
                    chunk = bytes(2**20)
                    for _ in range(4 * floats // len(chunk)):
                        f.write(chunk)
            elif info.filename.endswith("/data.pkl"):
                z.writestr(entry, _torch_pickle(claims))
            else:
                z.writestr(entry, src.read(info.filename))
    return out.getvalue()


def _state_of(blob: bytes) -> dict:
    import torch

    return torch.load(io.BytesIO(blob), weights_only=True)


def _torch_bytes(state) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


MODELZOOS_CORRUPT = r"checkpoint_000001/checkpoints is corrupt or truncated"
REFUSED = r"refused to unpickle it"


def _modelzoos_main(root: Path, seed: int) -> list[Case]:
    """One Model Zoos zoo, one trial folder per case (over several parts of 64 trials)."""
    import torch

    from pipeline.zoo import modelzoos

    rng = np.random.default_rng([seed, 4])
    zrel = "modelzoos/main"
    zoo = root / zrel
    counts = {
        "valid": 30,
        "nan_weight": 5,
        "inf_weight": 5,
        "bitflip_tensor_data": 30,
        "truncate_checkpoint": 12,
        "empty_checkpoint": 2,
        "bitflip_zip_end_signature": 2,
        "payload_bare_pickle": 18,
        "payload_in_torch_zip": 9,
        "dtype_float64": 2,
        "dtype_float16": 2,
        "dtype_int32": 2,
        "dtype_bool": 1,
        "dtype_complex64": 2,
        "storage_claims_terabyte": 2,
        "tensor_claims_huge_shape": 2,
        "tensor_expanded_huge": 2,
        "tensor_negative_stride": 1,
        "compressed_records": 1,
        "zip_bomb": 1,
        "sparse_tensor": 1,
        "weight_1d": 1,
        "bias_shape_mismatch": 1,
        "state_not_a_dict": 1,
        "entry_not_a_tensor": 1,
        "unknown_state_key": 1,
        "params_empty": 1,
        "params_truncated": 2,
        "params_not_utf8": 1,
        "params_not_object": 1,
        "params_deeply_nested": 1,
        "params_folder": 1,
        "params_symlink_out": 1,
        "params_missing": 1,
        "result_empty": 1,
        "result_truncated": 2,
        "result_wrong_epoch": 1,
        "result_deeply_nested": 1,
        "result_inf_accuracy": 1,
        "result_nan_accuracy": 1,
        "result_huge_number": 1,
        "result_percent": 1,
        "result_not_utf8": 1,
        "result_folder": 1,
        "result_symlink_out": 1,
        "checkpoint_folder": 1,
        "checkpoint_symlink_out": 2,
        "checkpoint_symlink_inside": 1,
        "checkpoint_symlink_to_folder": 1,
        "checkpoint_file_missing": 1,
        "checkpoint_dir_symlink_out": 1,
        "duplicate_epoch_folders": 2,
        "dataset_dotdot": 1,
        "dataset_absolute": 1,
        "nonutf8_trial_name": 2,
        "trial_symlink_out": 1,
    }
    plan = []
    for kind, n in counts.items():
        for _ in range(n):
            i = len(plan)
            c = _checkpoint(seed, 5000 + i, f"t{i:04d}-{kind}", "cnn" if i % 4 == 0 else "mlp")
            plan.append((kind, c))
    details: dict[int, str] = {}
    for i, (kind, c) in enumerate(plan):
        if kind == "nan_weight":
            details[i] = _set_weight(c, rng, float("nan"))
        elif kind == "inf_weight":
            details[i] = _set_weight(c, rng, float(rng.choice([np.inf, -np.inf])))
        elif kind == "dataset_dotdot":
            c.dataset = "../../../etc/passwd"
        elif kind == "dataset_absolute":
            c.dataset = "/etc/passwd"
    modelzoos.write_zoo(str(zoo), [c for _, c in plan])

    cases: list[Case] = []

    def case(kind, expect, cid, reason="", detail=""):
        cases.append(Case("modelzoos", zrel, kind, expect, cid, reason, detail))

    payload_count = 0
    for i, (kind, c) in enumerate(plan):
        trial = zoo / c.id
        ck = trial / "checkpoint_000001" / "checkpoints"
        params, result = trial / "params.json", trial / "result.json"
        blob = ck.read_bytes()
        if kind in (
            "valid",
            "dataset_dotdot",
            "dataset_absolute",
            "result_percent",
            "checkpoint_symlink_inside",
        ):
            if kind == "result_percent":
                line = json.loads(result.read_text())
                line["test_acc"], line["train_acc"] = 100 * line["test_acc"], 100 * line["train_acc"]
                result.write_text(json.dumps(line) + "\n")
            elif kind == "checkpoint_symlink_inside":
                kept = trial / "kept-checkpoint"
                os.replace(ck, kept)
                _link(ck, kept)
            case(kind, ACCEPTED, c.id)
        elif kind in ("nan_weight", "inf_weight"):
            case(kind, REJECTED, c.id, r"non-finite weight value", details[i])
        elif kind == "bitflip_tensor_data":
            records = [(off, size) for name, (off, size) in _zip_records(blob).items() if "/data/" in name]
            off, size = records[int(rng.integers(len(records)))]
            k, bit = int(rng.integers(size // 4)), int(rng.integers(32))
            value = _flipped_float32(blob[off + 4 * k : off + 4 * k + 4], bit)
            _flip_bit(ck, off + 4 * k + bit // 8, bit % 8)
            # torch checks no CRC on read: a flip that leaves a finite number is a valid checkpoint.
            detail = f"byte {off + 4 * k} bit {bit} -> {value!r}"
            if math.isfinite(value):
                case(kind, ACCEPTED, c.id, detail=detail)
            else:
                case(kind, REJECTED, c.id, r"non-finite", detail)
        elif kind == "truncate_checkpoint":
            n = int(rng.integers(1, len(blob)))
            _truncate(ck, n)
            case(kind, REJECTED, c.id, MODELZOOS_CORRUPT, f"{n} of {len(blob)} bytes")
        elif kind == "empty_checkpoint":
            _truncate(ck, 0)
            case(kind, REJECTED, c.id, MODELZOOS_CORRUPT)
        elif kind == "bitflip_zip_end_signature":
            end = blob.rfind(b"PK\x05\x06")
            _flip_bit(ck, end + int(rng.integers(4)), int(rng.integers(8)))
            case(kind, REJECTED, c.id, MODELZOOS_CORRUPT)
        elif kind == "payload_bare_pickle":
            style, protocol = PAYLOAD_STYLES[payload_count % 3], payload_count // 3 % 6
            payload_count += 1
            ck.write_bytes(payload_pickle(style, protocol))
            case(kind, REJECTED, c.id, REFUSED, f"{style}, pickle protocol {protocol}")
        elif kind == "payload_in_torch_zip":
            n = len([x for x in cases if x.mutation == kind])
            style, where = PAYLOAD_STYLES[n % 3], ("value", "key", "nested")[n // 3 % 3]
            state = _claimed_state(_state_of(blob))  # the tensors still point at their records
            if where == "value":
                state["module_list.0.weight"] = _Payload(style)
            elif where == "key":
                state[_Payload(style)] = state.pop("module_list.0.bias")
            else:
                state["module_list.0.weight"] = [collections.OrderedDict(hook=_Payload(style))]
            ck.write_bytes(_rezip(blob, {"data.pkl": _torch_pickle(state)}))
            case(kind, REJECTED, c.id, REFUSED, f"{style} as a state-dict {where}")
        elif kind.startswith("dtype_"):
            dtype = getattr(torch, kind[len("dtype_") :])
            state = {k: v.to(dtype) for k, v in _state_of(blob).items()}
            ck.write_bytes(_torch_bytes(state))
            if dtype.is_floating_point:
                case(kind, ACCEPTED, c.id, detail="converted to float32 on read")
            else:
                case(
                    kind, REJECTED, c.id, rf"module_list\.0\.(weight|bias)' holds {dtype}, not floating-point"
                )
        elif kind in ("storage_claims_terabyte", "tensor_claims_huge_shape", "tensor_expanded_huge"):
            n = len([x for x in cases if x.mutation == kind])
            claims = _claimed_state(_state_of(blob))
            weight, bias = claims["module_list.0.weight"], claims["module_list.0.bias"]
            if kind == "storage_claims_terabyte":
                weight.ref.numel = HUGE
                reason = MODELZOOS_CORRUPT + r".*record size"
            elif kind == "tensor_claims_huge_shape":
                weight.size, weight.stride = (HUGE, HUGE), (HUGE, 1)
                reason = MODELZOOS_CORRUPT
            else:
                # Stride 0 repeats the first row: a tensor of 2**24 (or 2**40) rows over a few stored bytes,
                # which anything that touches every element (a float32 copy, an isfinite mask) materialises.
                rows = (2**24, HUGE)[n % 2]
                weight.size, weight.stride = (rows, *weight.size[1:]), (0, *weight.stride[1:])
                bias.size, bias.stride = (rows,), (0,)
                reason = r"module_list\.0\.(weight|bias)' claims \d+ elements but its stored data holds \d+"
            ck.write_bytes(_rezip(blob, {"data.pkl": _torch_pickle(claims)}))
            case(kind, REJECTED, c.id, reason, f"{weight.size} over a record of {weight.ref.numel} floats")
        elif kind == "tensor_negative_stride":
            claims = _claimed_state(_state_of(blob))
            claims["module_list.0.weight"].stride = (-1,) * len(claims["module_list.0.weight"].size)
            ck.write_bytes(_rezip(blob, {"data.pkl": _torch_pickle(claims)}))
            case(kind, REJECTED, c.id, MODELZOOS_CORRUPT)
        elif kind == "compressed_records":
            ck.write_bytes(_rezip(blob, {}, compress=True))
            case(kind, REJECTED, c.id, r"checkpoints: \d+ compressed record\(s\)")
        elif kind == "zip_bomb":
            ck.write_bytes(_zip_bomb(blob, BOMB_FLOATS))
            reason = (
                rf"compressed record\(s\), the largest archive/data/0 unpacking to {4 * BOMB_FLOATS} bytes"
            )
            case(kind, REJECTED, c.id, reason, f"{4 * BOMB_FLOATS} bytes of zeros")
        elif kind in (
            "sparse_tensor",
            "weight_1d",
            "bias_shape_mismatch",
            "state_not_a_dict",
            "entry_not_a_tensor",
            "unknown_state_key",
        ):
            state = _state_of(blob)
            if kind == "sparse_tensor":
                state["module_list.0.weight"] = state["module_list.0.weight"].to_sparse()
                reason = r"entry 'module_list\.0\.weight' is a torch\.sparse_coo tensor, not a dense one"
            elif kind == "weight_1d":
                state["module_list.0.weight"] = state["module_list.0.weight"].reshape(-1)
                reason = r"not a linear or conv layer"
            elif kind == "bias_shape_mismatch":
                state["module_list.0.bias"] = torch.cat([state["module_list.0.bias"], torch.zeros(1)])
                reason = r"bias shape .* does not match"
            elif kind == "state_not_a_dict":
                state = list(state.values())
                reason = r"holds a list, not a state dict"
            elif kind == "entry_not_a_tensor":
                state["module_list.0.bias"] = 5
                reason = r"entry 'module_list\.0\.bias' is a int, not a tensor"
            else:
                state["optimizer.lr"] = torch.ones(1)
                reason = r"unsupported state-dict entries optimizer\.lr"
            ck.write_bytes(_torch_bytes(state))
            case(kind, REJECTED, c.id, reason)
        elif kind.startswith("params_") or kind.startswith("result_"):
            path = params if kind.startswith("params_") else result
            what = kind.split("_", 1)[1]
            text = path.read_bytes()
            if what == "empty":
                _truncate(path, 0)
            elif what == "truncated":
                # Cut before the last "}" so that what is left is never a complete JSON object.
                cut = int(rng.integers(1, text.rindex(b"}")))
                _truncate(path, cut)
            elif what == "not_utf8":
                path.write_bytes(text.replace(b'"', b'"\xff', 1))
            elif what == "not_object":
                path.write_text("[1, 2, 3]")
            elif what == "deeply_nested":
                path.write_bytes(_deep_json() + b"\n")
            elif what == "folder":
                _replace_with_folder(path)
            elif what == "symlink_out":
                _move_out(root, path, f"modelzoos-{c.id}-{path.name}")
            elif what == "missing":
                path.unlink()
            elif what == "wrong_epoch":
                path.write_text(json.dumps({**json.loads(text), "training_iteration": 7}) + "\n")
            elif what in ("inf_accuracy", "nan_accuracy", "huge_number"):
                value = {"inf_accuracy": "Infinity", "nan_accuracy": "NaN", "huge_number": "1e999"}[what]
                line = json.loads(text)
                line["test_acc"] = "@"
                path.write_text(json.dumps(line).replace('"@"', value) + "\n")
            reason = {
                ("params", "empty"): r"params\.json is not valid JSON",
                ("params", "truncated"): r"params\.json is not valid JSON",
                ("params", "not_utf8"): r"params\.json is not valid JSON",
                ("params", "not_object"): r"params\.json is not valid JSON: not a JSON object",
                ("params", "deeply_nested"): r"params\.json is not valid JSON: nested too deeply",
                ("params", "folder"): r"missing params\.json",
                (
                    "params",
                    "symlink_out",
                ): r"params\.json is a symbolic link to .*, outside the zoo: not read",
                ("params", "missing"): r"missing params\.json",
                ("result", "empty"): r"result\.json has no line with training_iteration 1",
                ("result", "truncated"): r"result\.json has no line with training_iteration 1 \(1 unreadable",
                ("result", "not_utf8"): r"result\.json is not text",
                ("result", "wrong_epoch"): r"result\.json has no line with training_iteration 1",
                (
                    "result",
                    "deeply_nested",
                ): r"result\.json has no line with training_iteration 1 \(1 unreadable",
                ("result", "inf_accuracy"): r"missing property 'test_accuracy'",
                ("result", "nan_accuracy"): r"missing property 'test_accuracy'",
                ("result", "huge_number"): r"missing property 'test_accuracy'",
                ("result", "folder"): r"missing result\.json",
                (
                    "result",
                    "symlink_out",
                ): r"result\.json is a symbolic link to .*, outside the zoo: not read",
            }[(kind.split("_", 1)[0], what)]
            case(kind, REJECTED, c.id, reason)
        elif kind == "checkpoint_folder":
            _replace_with_folder(ck)
            case(kind, REJECTED, c.id, r"checkpoint_000001/checkpoints is a folder, not a checkpoint file")
        elif kind == "checkpoint_symlink_out":
            _move_out(root, ck, f"modelzoos-{c.id}-checkpoints")
            case(kind, REJECTED, c.id, r"checkpoints is a symbolic link to .*, outside the zoo: not read")
        elif kind == "checkpoint_symlink_to_folder":
            ck.unlink()
            (trial / "a-folder").mkdir()
            _link(ck, trial / "a-folder")
            case(kind, REJECTED, c.id, r"checkpoint_000001/checkpoints is a folder, not a checkpoint file")
        elif kind == "checkpoint_file_missing":
            ck.unlink()
            case(kind, REJECTED, c.id, r"missing file checkpoint_000001/checkpoints")
        elif kind == "checkpoint_dir_symlink_out":
            _move_out(root, ck.parent, f"modelzoos-{c.id}-checkpoint_000001")
            case(
                kind, REJECTED, c.id, r"checkpoint_000001 is a symbolic link to .*, outside the zoo: not read"
            )
        elif kind == "duplicate_epoch_folders":
            # checkpoint_1 and checkpoint_000001 both say epoch 1: which one is meant cannot be known.
            other = trial / "checkpoint_1"
            other.mkdir()
            (other / "checkpoints").write_bytes(_torch_bytes({k: v * 2 for k, v in _state_of(blob).items()}))
            case(
                kind, REJECTED, c.id, r"2 checkpoint folders for epoch 1 \(checkpoint_000001, checkpoint_1\)"
            )
        elif kind == "nonutf8_trial_name":
            new = _rename_bytes(trial, b"\xff\xfe-" + c.id.encode())
            case(kind, REJECTED, printable(new.name), r"trial folder name is not valid UTF-8")
        elif kind == "trial_symlink_out":
            _move_out(root, trial, f"modelzoos-{c.id}")
            case(kind, REJECTED, c.id, rf"{c.id} is a symbolic link to .*, outside the zoo: not read")
        else:
            raise AssertionError(kind)
    return cases


def _modelzoos_whole_zoo(root: Path, seed: int) -> list[Case]:
    from pipeline.zoo import modelzoos

    cases: list[Case] = []
    plan = {
        "config_empty": (ZOO_ERROR, r"config\.json is not valid JSON"),
        "config_not_json": (ZOO_ERROR, r"config\.json is not valid JSON"),
        "config_not_utf8": (ZOO_ERROR, r"config\.json is not valid JSON"),
        "config_deeply_nested": (ZOO_ERROR, r"config\.json is not valid JSON \(nested too deeply\)"),
        "config_folder": (ZOO_ERROR, r"config\.json is a folder, not a file"),
        "config_symlink_out": (
            ZOO_ERROR,
            r"config\.json is a symbolic link to .*, outside the zoo: not read",
        ),
        "config_array": (ACCEPTED, ""),
        "no_trial_folders": (ZOO_ERROR, r"has no trial folders"),
    }
    for n, (kind, (expect, reason)) in enumerate(plan.items()):
        zrel = f"modelzoos/zoo-{n:02d}-{kind}"
        zoo = root / zrel
        items = [_checkpoint(seed, 6000 + 2 * n + j, f"z{n:02d}-{j}") for j in range(2)]
        modelzoos.write_zoo(str(zoo), items)
        config = zoo / "config.json"
        if kind == "config_empty":
            _truncate(config, 0)
        elif kind == "config_not_json":
            config.write_text("{'dataset::name': 'single quotes'}")
        elif kind == "config_not_utf8":
            config.write_bytes(b'{"dataset::name": "\xff"}')
        elif kind == "config_deeply_nested":
            config.write_bytes(_deep_json())
        elif kind == "config_folder":
            _replace_with_folder(config)
        elif kind == "config_symlink_out":
            _move_out(root, config, f"{zrel.replace('/', '-')}-config.json")
        elif kind == "config_array":
            config.write_text("[]")
        elif kind == "no_trial_folders":
            for c in items:
                shutil.rmtree(zoo / c.id)
            (zoo / "notes").mkdir()
            (zoo / "notes" / "readme.txt").write_text("no trials here")
        if expect == ZOO_ERROR:
            cases.append(Case("modelzoos", zrel, kind, ZOO_ERROR, None, reason))
        else:
            cases += [Case("modelzoos", zrel, kind, expect, c.id, reason) for c in items]
    return cases


# --- the corpus ---------------------------------------------------------------------------------------


def write_corpus(root: str | os.PathLike, seed: int = DEFAULT_SEED) -> list[Case]:
    """Write the corpus under ``root`` (created; must not exist) and return its cases (also in cases.json)."""
    root = Path(root)
    root.mkdir(parents=True)
    (root / OUTSIDE).mkdir()
    cases = (
        _native_main(root, seed)
        + _native_whole_zoo(root, seed)
        + _smallcnnzoo_main(root, seed)
        + _smallcnnzoo_whole_zoo(root, seed)
        + _modelzoos_main(root, seed)
        + _modelzoos_whole_zoo(root, seed)
    )
    (root / CASES_FILE).write_text(json.dumps([asdict(c) for c in cases], indent=1) + "\n")
    return cases


def zoos(cases: list[Case]) -> dict[tuple[str, str], list[Case]]:
    """Cases grouped by (format, zoo folder), in corpus order."""
    out: dict[tuple[str, str], list[Case]] = {}
    for c in cases:
        out.setdefault((c.format, c.zoo), []).append(c)
    return out


def corpus_digest(root: str | os.PathLike) -> str:
    """sha256 over every entry under ``root``: its name (as bytes), kind, and content or link target."""
    h = hashlib.sha256()
    base = os.fsencode(root)
    for folder, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(folder, name)
            st = os.lstat(path)
            h.update(os.path.relpath(path, base) + b"\0")
            if stat.S_ISLNK(st.st_mode):
                h.update(b"link\0" + os.readlink(path) + b"\0")
            elif stat.S_ISDIR(st.st_mode):
                h.update(b"dir\0")
            else:
                with open(path, "rb") as f:
                    h.update(b"file\0" + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def case_counts(cases: list[Case]) -> dict:
    """Counts a document can quote: cases per format, per mutation kind, and per expected outcome."""
    return {
        "total": len(cases),
        "zoos": len(zoos(cases)),
        "per_format": dict(Counter(c.format for c in cases)),
        "per_outcome": {o: sum(c.expect == o for c in cases) for o in OUTCOMES},
        "per_format_outcome": {
            f: {o: sum(c.expect == o and c.format == f for c in cases) for o in OUTCOMES}
            for f in dict.fromkeys(c.format for c in cases)
        },
        "per_mutation": {
            f"{c.format}/{c.mutation}": dict(
                Counter(x.expect for x in cases if (x.format, x.mutation) == (c.format, c.mutation))
            )
            for c in cases
        },
    }


def format_counts(cases: list[Case]) -> str:
    """The counts as a table for a terminal or a document."""
    d = case_counts(cases)
    lines = [
        f"{d['total']} cases in {d['zoos']} zoos: "
        + ", ".join(f"{n} {o}" for o, n in d["per_outcome"].items())
    ]
    for fmt, outcome in d["per_format_outcome"].items():
        lines.append(
            f"  {fmt}: {d['per_format'][fmt]} cases ("
            + ", ".join(f"{n} {o}" for o, n in outcome.items() if n)
            + ")"
        )
    lines.append("per mutation (expected outcome):")
    for name, outcome in d["per_mutation"].items():
        lines.append(f"  {name:<52} " + ", ".join(f"{n} {o}" for o, n in sorted(outcome.items())))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write the zoo-reader fuzz corpus and print its case counts."
    )
    parser.add_argument("root", help="folder to create")
    parser.add_argument("--seed", type=int, default=int(os.environ.get(SEED_ENV, DEFAULT_SEED)))
    args = parser.parse_args()
    cases = write_corpus(args.root, args.seed)
    print(format_counts(cases))
    print(f"corpus digest {corpus_digest(args.root)}")


if __name__ == "__main__":
    main()
