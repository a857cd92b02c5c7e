"""The reader API shared by every zoo format: detect, list into parts, read a part.

A zoo is listed once on the driver into *parts*: picklable, JSON-able dicts describing disjoint
slices of the zoo (a native shard, a row range of ``weights.npy``, a group of trial folders). Each
part carries ``uri``, ``format``, ``options`` and ``ids`` (the checkpoints it lists), so a Ray task
can read it without the listing. Reading a part yields one ``Checkpoint`` or ``Rejection`` per
listed id: accepted + rejected always equals ``num_listed``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import posixpath
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline import storage
from pipeline.zoo.checkpoint import Checkpoint, Rejection

FORMATS = ("native", "smallcnnzoo", "modelzoos", "safetensors", "wildpark")
# The module of each format, where its name differs (a module named safetensors would shadow the package).
FORMAT_MODULES = {"safetensors": "tensorfolder"}
STEPS = ("final", "all")

# File names that identify a format at the top of a zoo (or one folder below it).
NATIVE_MARKER = "zoo.json"
SMALLCNNZOO_FILES = ("weights.npy", "metrics.csv.gz", "layout.csv")
MODELZOOS_TRIAL_FILES = ("params.json", "result.json")
SAFETENSORS_TABLE = "properties.csv"
WILDPARK_FILE = "checkpoint.pt"  # <run>/<checkpoint>/checkpoint.pt
# How many subfolders detection looks into: enough to see past a stray folder, cheap on S3.
DETECT_SUBFOLDERS = 8


class ZooError(ValueError):
    """A problem with the zoo as a whole: missing, empty, unknown format, a missing required file."""


@dataclass
class ZooListing:
    uri: str
    format: str
    options: dict[str, Any]
    parts: list[dict] = field(default_factory=list)
    num_listed: int = 0
    fingerprint: str = ""


def _format_module(name: str):
    if name not in FORMATS:
        raise ZooError(f"unknown zoo format {name!r}; expected one of {', '.join(FORMATS)} or 'auto'")
    return importlib.import_module(f"pipeline.zoo.{FORMAT_MODULES.get(name, name)}")


def _children(fs, path: str) -> dict[str, str]:
    """{basename: "file" | "directory"} of the direct children of a folder."""
    out = {}
    for info in fs.ls(path, detail=True):
        name = posixpath.basename(info["name"].rstrip("/"))
        if name:
            out[name] = "directory" if info["type"] == "directory" else "file"
    return out


def _format_of_folder(children: dict[str, str]) -> str | None:
    if children.get(NATIVE_MARKER) == "file":
        return "native"
    if any(children.get(f) == "file" for f in SMALLCNNZOO_FILES):
        return "smallcnnzoo"
    if children.get(SAFETENSORS_TABLE) == "file":
        return "safetensors"
    return None


def detect_format(uri: str) -> str:
    """The zoo's format ("native", "smallcnnzoo", "modelzoos", "safetensors" or "wildpark") from the files
    present.

    Looks at the zoo folder and at most DETECT_SUBFOLDERS of its subfolders; ZooError says what was found.
    """
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise ZooError(f"no zoo at {uri}: the path does not exist")
    if fs.isfile(path):
        raise ZooError(f"{uri} is a file; a zoo is a folder (or an s3:// prefix)")
    children = _children(fs, path)
    if not children:
        raise ZooError(f"empty zoo: {uri} holds no files")
    found = _format_of_folder(children)
    if found:
        return found
    subfolders = sorted(name for name, kind in children.items() if kind == "directory")
    for name in subfolders[:DETECT_SUBFOLDERS]:
        grandchildren = _children(fs, posixpath.join(path, name))
        if _format_of_folder(grandchildren) == "smallcnnzoo":
            return "smallcnnzoo"  # a parent folder of dataset folders
        # Both are Ray Tune trial folders (params.json, checkpoint_<N>/); the checkpoint file tells them apart.
        inner = sorted(g for g, kind in grandchildren.items() if kind == "directory")
        if inner and _children(fs, posixpath.join(path, name, inner[-1])).get(WILDPARK_FILE) == "file":
            return "wildpark"
        if any(grandchildren.get(f) == "file" for f in MODELZOOS_TRIAL_FILES) or any(
            g.startswith("checkpoint_") and kind == "directory" for g, kind in grandchildren.items()
        ):
            return "modelzoos"
    shown = ", ".join(sorted(children)[:10]) + (", …" if len(children) > 10 else "")
    raise ZooError(
        f"cannot detect the format of the zoo at {uri}: found [{shown}]; expected {NATIVE_MARKER} (native), "
        f"{' + '.join(SMALLCNNZOO_FILES)} (smallcnnzoo, here or in dataset subfolders), "
        f"trial folders holding params.json / result.json / checkpoint_<N>/ (modelzoos), "
        f"{SAFETENSORS_TABLE} beside *.safetensors files (safetensors), "
        f"or <run>/<checkpoint>/{WILDPARK_FILE} (wildpark)"
    )


def open_zoo(uri: str, format: str = "auto", *, steps: str = "final", epoch: int | None = None) -> ZooListing:
    """List a zoo into parts without reading any weights.

    ``steps`` applies to smallcnnzoo ("final": step 86 only, "all": every row) and wildpark ("final": each
    run's last checkpoint, "all": every one); ``epoch`` to modelzoos
    (None: each trial's last checkpoint). Raises ZooError for whole-zoo problems.
    """
    if steps not in STEPS:
        raise ZooError(f"steps must be one of {', '.join(STEPS)}, got {steps!r}")
    if epoch is not None and (not isinstance(epoch, int) or epoch < 0):
        raise ZooError(f"epoch must be a non-negative integer or None, got {epoch!r}")
    fmt = detect_format(uri) if format == "auto" else format
    module = _format_module(fmt)
    if fmt in ("smallcnnzoo", "wildpark"):
        listing = module.list_zoo(uri, steps=steps)
    elif fmt == "modelzoos":
        listing = module.list_zoo(uri, epoch=epoch)
    else:
        listing = module.list_zoo(uri)
    if listing.num_listed == 0:
        raise ZooError(f"empty zoo: {uri} ({fmt}) lists no checkpoints")
    return listing


def read_part(part: dict) -> Iterator[Checkpoint | Rejection]:
    """Yield one Checkpoint or Rejection per id listed in ``part`` (self-contained: opens storage itself).

    A failure the format reader did not foresee rejects the rest of the part with the error as reason,
    so the count still balances; OSErrors other than a missing file propagate (they may be transient,
    and a Ray task retry can cure them).
    """
    module = _format_module(part["format"])
    # Counted, not a set: a native part may list a duplicate id twice (the second is rejected).
    remaining = Counter(part["ids"])
    try:
        for item in module.read_part(part):
            remaining[item.id] -= 1
            yield item
    except OSError as e:
        if not isinstance(e, FileNotFoundError):
            raise
        reason = f"missing file: {e}"
    except Exception as e:  # turned into per-checkpoint reasons, never swallowed
        reason = f"reader failed on this part: {type(e).__name__}: {e}"
    else:
        reason = "listed but not produced by the reader (internal error)"
    for cid in part["ids"]:
        if remaining[cid] > 0:
            remaining[cid] -= 1
            yield Rejection(cid, reason)


def read_zoo(uri: str, format: str = "auto", **options: Any) -> Iterator[Checkpoint | Rejection]:
    """Every checkpoint or rejection of a zoo, part by part in listing order."""
    listing = open_zoo(uri, format, **options)
    for part in listing.parts:
        yield from read_part(part)


def file_stamp(info: dict) -> str:
    """A cheap change marker for one file: its ETag on object storage, else its modification time."""
    for key in ("ETag", "etag", "mtime", "LastModified", "last_modified"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


def fingerprint(format: str, options: dict, files: list[tuple[str, int, str]]) -> str:
    """sha256 over the format, options and (relative name, size, stamp) of every listed file."""
    payload = json.dumps(
        {"format": format, "options": options, "files": sorted(files)}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def relative(root: str, path: str) -> str:
    """``path`` relative to ``root`` with '/' separators (both as the filesystem returns them)."""
    root = root.rstrip("/")
    return path[len(root) :].lstrip("/") if path.startswith(root) else path


def printable(name: str) -> str:
    """A file or folder name as ids and reasons may carry it: bytes that are not UTF-8 (which the OS layer
    hands over as lone surrogates, unprintable and unstorable in Arrow) become ``\\xNN`` escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def first_line(e: BaseException) -> str:
    """An exception's first line for a one-line reason (its type's name when it has no text)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def parse_json(data: bytes | str) -> Any:
    """``json.loads``, with nesting too deep for the parser reported as the ValueError any bad JSON raises."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def mark_duplicates(parts: list[dict], describe: Callable[[dict, int], str]) -> None:
    """Set each part's "rejections" to [[index in part, reason]] for every id listed again after its
    first occurrence; ``describe(part, index)`` names where an id was first listed."""
    first: dict[str, str] = {}
    for part in parts:
        part["rejections"] = []
        for i, cid in enumerate(part["ids"]):
            if cid in first:
                reason = f"duplicate id (first listed in {first[cid]}); ids must be unique within a zoo"
                part["rejections"].append([i, reason])
            else:
                first[cid] = describe(part, i)
