"""The Model Zoos layout (Schürholt et al. 2022): Ray Tune trial folders under a zoo folder.

    <zoo>/config.json                          optional zoo-wide config (dataset name)
    <zoo>/<trial>/params.json                  the trial config (model::*, optim::*, training::*, seed)
    <zoo>/<trial>/result.json                  JSON lines, one per epoch (train_acc, test_acc, …, training_iteration)
    <zoo>/<trial>/checkpoint_<N>/checkpoints   torch.save of a state dict: module_list.<i>.weight / .bias
                                               (ResNet-18 zoos: torchvision's names, batch-norm buffers)

Checkpoint files are pickles: they are loaded only with ``torch.load(..., weights_only=True)``.
A checkpoint's id is its trial folder name; the chosen epoch is in its hyperparameters ("epoch").
"""

from __future__ import annotations

import io
import json
import math
import os
import posixpath
import re
import zipfile
from collections.abc import Iterable, Iterator

import numpy as np

from pipeline import storage
from pipeline.zoo.checkpoint import (
    INR_PROPERTIES,
    Checkpoint,
    Layer,
    Rejection,
    validate,
    with_generalization_gap,
)
from pipeline.zoo.listing import (
    ZooError,
    ZooListing,
    file_stamp,
    fingerprint,
    first_line,
    parse_json,
    printable,
    relative,
)
from pipeline.zoo.state_dict import layers_from_state_dict

TRIALS_PER_PART = 64
CHECKPOINT_FILE = re.compile(r"^checkpoint_(\d+)/checkpoints$")
CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")
STATE_KEY = re.compile(r"^(?P<layer>.+\.(?P<index>\d+))\.(?P<what>weight|bias)$")
KIND_OF_NDIM = {2: "linear", 3: "conv1d", 4: "conv2d"}
# result.json key → property name; accuracies may be percentages (detected per trial).
RESULT_PROPERTIES = {
    "train_acc": "train_accuracy",
    "test_acc": "test_accuracy",
    "val_acc": "val_accuracy",
    "train_loss": "train_loss",
    "test_loss": "test_loss",
    "val_loss": "val_loss",
    **{name: name for name in INR_PROPERTIES},
}
ACCURACY_KEYS = ("train_acc", "test_acc", "val_acc")
# Layer shapes (PyTorch layout) of the published families; channels_in may be 1 or 3 for CNN-s.
FAMILY_SPECS = {
    "cnn-s": [
        [(8, c, 5, 5), (8,), (6, 8, 5, 5), (6,), (4, 6, 2, 2), (4,), (20, 36), (20,), (10, 20), (10,)]
        for c in (1, 3)
    ],
    "cnn-l": [
        [(16, 3, 3, 3), (16,), (32, 16, 3, 3), (32,), (15, 32, 3, 3), (15,), (20, 60), (20,), (10, 20), (10,)]
    ],
}
# Our hyperparameter names → the params.json keys Model Zoos uses (others go under training::).
PARAM_KEYS = {
    "lr": "optim::lr",
    "learning_rate": "optim::lr",
    "optimizer": "optim::optimizer",
    "weight_decay": "optim::wd",
    "wd": "optim::wd",
    "batch_size": "training::batchsize",
    "batchsize": "training::batchsize",
    "epochs": "training::epochs_train",
    "dropout": "model::dropout",
    "init": "model::init_type",
    "init_type": "model::init_type",
    "activation": "model::nlin",
    "nlin": "model::nlin",
    "seed": "seed",
}
TRIAL_NAME = re.compile(r"[^A-Za-z0-9._=+-]+")


# --- reading ---------------------------------------------------------------------------------------


def _zoo_dataset(uri: str, fs, root: str, outside: dict[str, str]) -> str:
    """The zoo-wide dataset name: config.json's dataset::name, else its dataset::dump, else the folder name."""
    if "config.json" in outside:
        raise ZooError(
            f"{uri}: config.json is a symbolic link to {outside['config.json']}, outside the zoo: not read"
        )
    config_path = posixpath.join(root, "config.json")
    try:
        config = parse_json(fs.cat_file(config_path))
    except FileNotFoundError:
        config = {}
    except IsADirectoryError:
        raise ZooError(f"{uri}: config.json is a folder, not a file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ZooError(f"{uri}: config.json is not valid JSON ({e})") from None
    return _dataset_from(config) or posixpath.basename(root.rstrip("/"))


def _dataset_from(config: dict) -> str | None:
    if not isinstance(config, dict):
        return None
    if isinstance(config.get("dataset::name"), str):
        return config["dataset::name"]
    dump = config.get("dataset::dump")
    if isinstance(dump, str) and dump:
        stem = posixpath.splitext(posixpath.basename(dump.rstrip("/")))[0]
        if stem != "dataset":
            return stem
        # The real zoos dump to ".../<dataset folder>/dataset.pt": the folder names the dataset.
        return posixpath.basename(posixpath.dirname(dump.rstrip("/"))) or None
    return None


def list_zoo(uri: str, epoch: int | None = None) -> ZooListing:
    """Parts of up to TRIALS_PER_PART trial folders; the epoch is chosen per trial here."""
    fs, root = storage.filesystem(uri)
    if not fs.exists(root):
        raise ZooError(f"no zoo at {uri}: the path does not exist")
    # withdirs: an empty checkpoint_<N>/ (its file lost) still shows which epoch was the last.
    found_abs = fs.find(root, withdirs=True, detail=True)
    found = {relative(root, p): info for p, info in found_abs.items()}
    outside = {
        relative(root, p): t for p, info in found_abs.items() if (t := storage.link_outside(root, p, info))
    }
    files = {rel: info for rel, info in found.items() if info["type"] != "directory"}
    trials: dict[str, dict] = {}

    def trial_entry(name: str) -> dict:
        return trials.setdefault(
            name, {"files": set(), "checkpoints": {}, "dirs": {}, "folders": {}, "names": {}}
        )

    for rel, info in found.items():
        if "/" not in rel:
            # Zoo-level entries: config.json, dataset.pt, experiment state, the trial folders. A trial folder
            # linked from outside the zoo is listed (to be rejected), not passed over in silence.
            if rel in outside and os.path.isdir(posixpath.join(root, rel)):
                trial_entry(rel)["link"] = outside[rel]
            continue
        trial, rest = rel.split("/", 1)
        entry = trial_entry(trial)
        if info["type"] != "directory":
            entry["files"].add(rest)
        if m := CHECKPOINT_FILE.match(rest):
            # A folder where the checkpoint file belongs is named as such, not opened.
            entry["folders" if info["type"] == "directory" else "checkpoints"][int(m.group(1))] = rest
        # A checkpoint folder linked from outside is listed too: the trial is then rejected, unread.
        in_folder = "/" in rest or info["type"] == "directory" or rel in outside
        if in_folder and (m := CHECKPOINT_DIR.match(rest.split("/", 1)[0])):
            entry["dirs"][int(m.group(1))] = m.group(0)
            entry["names"].setdefault(int(m.group(1)), set()).add(m.group(0))
    trials = {
        name: t
        for name, t in trials.items()
        if t["dirs"] or t["files"] & {"params.json", "result.json"} or t.get("link")
    }
    if not trials:
        raise ZooError(
            f"empty zoo: {uri} has no trial folders (holding params.json, result.json or checkpoint_<N>/)"
        )
    zoo_dataset = _zoo_dataset(uri, fs, root, outside)
    options = {"epoch": epoch}

    entries = []
    for name in sorted(trials):
        t = trials[name]
        # The latest checkpoint folder even when its file is missing: falling back to an older epoch
        # would silently change what is read.
        chosen = max(t["dirs"]) if epoch is None and t["dirs"] else epoch
        entry = {"name": name, "epoch": chosen, "checkpoint": t["checkpoints"].get(chosen), "reason": None}
        missing = [f for f in ("params.json", "result.json") if f not in t["files"]]
        escaping = [
            f
            for f in ("params.json", "result.json", t["dirs"].get(chosen), entry["checkpoint"])
            if f and f"{name}/{f}" in outside
        ]
        if printable(name) != name:
            # An id must be printable and storable (Arrow strings are UTF-8): listed in escaped form, unread.
            entry["name"] = printable(name)
            entry["reason"] = "trial folder name is not valid UTF-8: not read"
        elif t.get("link"):
            entry["reason"] = f"{name} is a symbolic link to {t['link']}, outside the zoo: not read"
        elif escaping:
            entry["reason"] = (
                f"{escaping[0]} is a symbolic link to {outside[f'{name}/{escaping[0]}']}, outside the zoo: not read"
            )
        elif missing:
            entry["reason"] = f"missing {' and '.join(missing)}"
        elif len(t["names"].get(chosen, ())) > 1:
            found_names = ", ".join(sorted(t["names"][chosen]))
            entry["reason"] = (
                f"{len(t['names'][chosen])} checkpoint folders for epoch {chosen} ({found_names}): which one "
                "is meant is ambiguous"
            )
        elif chosen in t["folders"]:
            entry["reason"] = f"{t['folders'][chosen]} is a folder, not a checkpoint file"
        elif chosen is None:
            entry["reason"] = "no checkpoint_<N>/ folder"
        elif entry["checkpoint"] is None and chosen in t["dirs"]:
            entry["reason"] = f"missing file {t['dirs'][chosen]}/checkpoints"
        elif entry["checkpoint"] is None:
            have = ", ".join(map(str, sorted(t["checkpoints"]))) or "none"
            entry["reason"] = f"no checkpoint for epoch {chosen} (epochs with one: {have})"
        entries.append(entry)

    parts = [
        {
            "uri": uri,
            "format": "modelzoos",
            "options": options,
            "zoo_dataset": zoo_dataset,
            "trials": entries[i : i + TRIALS_PER_PART],
            "ids": [e["name"] for e in entries[i : i + TRIALS_PER_PART]],
        }
        for i in range(0, len(entries), TRIALS_PER_PART)
    ]
    stamps = [(rel, int(info["size"]), file_stamp(info)) for rel, info in files.items()]
    return ZooListing(
        uri=uri,
        format="modelzoos",
        options=options,
        parts=parts,
        num_listed=len(entries),
        fingerprint=fingerprint("modelzoos", options, stamps),
    )


def read_part(part: dict) -> Iterator[Checkpoint | Rejection]:
    """One Checkpoint or Rejection per trial folder of the part."""
    fs, root = storage.filesystem(part["uri"])
    for trial in part["trials"]:
        if trial["reason"]:
            yield Rejection(trial["name"], trial["reason"])
            continue
        item = _read_trial(fs, root, trial, part["zoo_dataset"])
        if isinstance(item, Checkpoint):
            reason = validate(item)
            if reason:
                item = Rejection(item.id, reason)
        yield item


def _read_trial(fs, root: str, trial: dict, zoo_dataset: str) -> Checkpoint | Rejection:
    name, epoch = trial["name"], trial["epoch"]
    folder = posixpath.join(root, name)
    try:
        params = parse_json(fs.cat_file(posixpath.join(folder, "params.json")))
        if not isinstance(params, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        return Rejection(name, "params.json is missing")
    except IsADirectoryError:  # a link, inside the zoo, to a folder
        return Rejection(name, "params.json is a folder, not a file")
    except (ValueError, UnicodeDecodeError) as e:
        return Rejection(name, f"params.json is not valid JSON: {e}")
    try:
        result_text = fs.cat_file(posixpath.join(folder, "result.json")).decode()
    except FileNotFoundError:
        return Rejection(name, "result.json is missing")
    except IsADirectoryError:
        return Rejection(name, "result.json is a folder, not a file")
    except UnicodeDecodeError as e:
        return Rejection(name, f"result.json is not text: {e}")
    properties = _properties(result_text, epoch)
    if isinstance(properties, str):
        return Rejection(name, properties)

    checkpoint_path = posixpath.join(folder, trial["checkpoint"])
    try:
        blob = fs.cat_file(checkpoint_path)
    except FileNotFoundError:
        return Rejection(name, f"{trial['checkpoint']} is missing")
    except IsADirectoryError:
        return Rejection(name, f"{trial['checkpoint']} is a folder, not a checkpoint file")
    state = _load_state_dict(blob, trial["checkpoint"])
    if isinstance(state, str):
        return Rejection(name, state)
    layers = _layers(state)
    if isinstance(layers, str):
        return Rejection(name, f"{trial['checkpoint']}: {layers}")

    hyperparameters = {k: _scalar(v) for k, v in params.items()}
    hyperparameters["epoch"] = epoch
    family = _family(layers, params)
    architecture = _architecture(family, layers, params)
    if architecture is not None:
        hyperparameters["architecture"] = architecture
    return Checkpoint(
        id=name,
        family=family,
        dataset=_dataset_from(params) or zoo_dataset,
        layers=layers,
        properties=with_generalization_gap(properties),
        hyperparameters=hyperparameters,
    )


def _scalar(value):
    """Hyperparameters are JSON scalars: lists and objects become their JSON text."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else json.dumps(value)


def _properties(result_text: str, epoch: int) -> dict[str, float] | str:
    """Properties from the result line of ``epoch``, or why there are none."""
    lines, bad = [], 0
    for raw in result_text.splitlines():
        if not raw.strip():
            continue
        try:
            line = parse_json(raw)
        except ValueError:
            bad += 1
            continue
        if isinstance(line, dict):
            lines.append(line)
    chosen = [line for line in lines if line.get("training_iteration") == epoch]
    if not chosen:
        note = f" ({bad} unreadable line(s))" if bad else ""
        return f"result.json has no line with training_iteration {epoch}{note}"
    # One percentage anywhere in the trial means the trial records percentages.
    percent = any(
        isinstance(line.get(k), (int, float)) and line[k] > 1.0 for line in lines for k in ACCURACY_KEYS
    )
    out = {}
    for key, prop in RESULT_PROPERTIES.items():
        value = chosen[-1].get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[prop] = float(value) / (100.0 if percent and key in ACCURACY_KEYS else 1.0)
    return out


def _load_state_dict(blob: bytes, rel: str) -> dict[str, np.ndarray] | str:
    """The state dict of a checkpoint file as float32 arrays, or why it cannot be used."""
    import pickle

    import torch

    if packed := _compressed_records(blob):
        largest = max(packed, key=lambda info: info.file_size)
        return (
            f"{rel}: {len(packed)} compressed record(s), the largest {largest.filename} unpacking to "
            f"{largest.file_size} bytes from {largest.compress_size}; torch.save stores records uncompressed, "
            "and inflating them could fill memory: refused unread"
        )
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        return (
            f"{rel} is not a plain tensor state dict: refused to unpickle it (torch.load weights_only=True "
            f"blocks code execution): {first_line(e)}"
        )
    except Exception as e:  # truncated zip, bad magic, …: torch raises several types
        return f"{rel} is corrupt or truncated: {type(e).__name__}: {first_line(e)}"
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        return f"{rel} holds a {type(obj).__name__}, not a state dict"
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            return f"{rel}: entry {key!r} is a {type(value).__name__}, not a tensor"
        if value.layout != torch.strided:
            return f"{rel}: entry {key!r} is a {value.layout} tensor, not a dense one"
        # Weights are real floats; an integer buffer (BatchNorm's num_batches_tracked) is named below as an
        # entry this reader does not support.
        if value.is_complex() or (not value.is_floating_point() and STATE_KEY.match(str(key))):
            return f"{rel}: entry {key!r} holds {value.dtype}, not floating-point weights"
        # Strides can make a few stored bytes look like any number of elements (stride 0 repeats them);
        # converting or checking such a tensor would allocate all of them.
        stored = value.untyped_storage().nbytes() // value.element_size()
        if value.numel() > stored:
            return f"{rel}: entry {key!r} claims {value.numel()} elements but its stored data holds {stored}"
        out[str(key)] = value.detach().to(torch.float32).numpy()
    return out


def _compressed_records(blob: bytes) -> list[zipfile.ZipInfo]:
    """The compressed records of a zip checkpoint, read from its central directory (nothing inflated)."""
    try:
        infos = zipfile.ZipFile(io.BytesIO(blob)).infolist()
    except Exception:  # not a zip, or a damaged one: torch.load then says what is wrong with it
        return []
    return [info for info in infos if info.compress_type != zipfile.ZIP_STORED]


def _layers(state: dict[str, np.ndarray]) -> list[Layer] | str:
    """Layers ordered by module index, weight and bias paired by prefix (indices may have gaps); a state
    dict named otherwise (torchvision's ResNet-18: ``conv1``, ``layer1.0.bn1``, ``fc``) is read in its
    own order by pipeline.zoo.state_dict."""
    grouped: dict[str, dict] = {}
    for key, arr in state.items():
        m = STATE_KEY.match(key)
        if not m:
            return layers_from_state_dict(state)
        grouped.setdefault(m.group("layer"), {"index": int(m.group("index"))})[m.group("what")] = arr
    if not grouped:
        return "empty state dict"
    layers = []
    for layer_name, g in sorted(grouped.items(), key=lambda kv: (kv[0].rsplit(".", 1)[0], kv[1]["index"])):
        if "weight" not in g:
            return f"{layer_name} has a bias but no weight"
        kind = KIND_OF_NDIM.get(g["weight"].ndim)
        if kind is None:
            return (
                f"{layer_name}.weight has shape {tuple(g['weight'].shape)}: not a linear or conv layer "
                f"(a module list of linear and conv layers holds no other weights)"
            )
        layers.append(Layer(layer_name, kind, g["weight"], g.get("bias")))
    return layers


# params.json's model::nlin → the activation op of pipeline.families.
ACTIVATIONS = {
    "relu": "relu",
    "tanh": "tanh",
    "gelu": "gelu",
    "sigmoid": "sigmoid",
    "leakyrelu": "leakyrelu",
    "silu": "silu",
}


def _architecture(family: str, layers: list[Layer], params: dict) -> str | None:
    """The runnable architecture (pipeline.families JSON) of a published family, so the network can be
    probed and permuted; None where the trial does not say enough (an unknown activation) or the family
    is not one the generator code defines.

    The op order follows the public generator code (HSG-AIML, ``def_net.py``): CNN-s and CNN-l put max
    pooling before the activation, CNN-l keeps a dropout module even at p = 0 (no effect in eval mode),
    ResNet-18 is torchvision's with a 3×3 stride-1 stem and no max pooling.
    """
    from pipeline import families

    activation = ACTIVATIONS.get(str(params.get("model::nlin", "")).lower())
    if family == "cnn-s" and activation:
        arch = families.cnn_s_architecture(activation, 0.0, int(layers[0].weight.shape[1]))
    elif family == "cnn-l" and activation:
        arch = families.cnn_l_architecture(activation)
    elif family == "resnet18":
        classes = int(layers[-1].weight.shape[0])
        # Tiny-ImageNet (200 classes) trains on 64×64 images, CIFAR-10 and CIFAR-100 on 32×32.
        arch = families.resnet18_architecture(
            classes, int(layers[0].weight.shape[1]), 64 if classes == 200 else 32
        )
    else:
        return None
    return families.architecture_json(arch)


def _family(layers: list[Layer], params: dict) -> str:
    """The published family whose shapes match; else the family params.json declares; else unknown."""
    shapes = []
    for layer in layers:
        shapes.append(tuple(layer.weight.shape))
        if layer.bias is not None:
            shapes.append(tuple(layer.bias.shape))
    for family, specs in FAMILY_SPECS.items():
        if shapes in specs:
            return family
    declared = params.get("model::type")
    if isinstance(declared, str) and declared:
        return declared.lower()
    return "modelzoos-unknown"


# --- writing ---------------------------------------------------------------------------------------


def write_zoo(uri: str, checkpoints: Iterable[Checkpoint]) -> None:
    """Write a Model Zoos trial layout: one trial folder per checkpoint, named after its id.

    Layer i is saved as ``module_list.<2i>`` (as in an nn.ModuleList with an activation after each
    layer), so readers must not assume contiguous indices. The epoch N is the hyperparameter "epoch",
    else "epochs", else 1: files ``checkpoint_<N:06d>/checkpoints`` and one result.json line with
    ``training_iteration`` N. params.json holds the hyperparameters under model::/optim::/training::
    keys plus ``model::type`` (family) and ``dataset::name``. Raises ZooError for no checkpoints or
    ids that collide as folder names.
    """
    import torch

    items = list(checkpoints)
    if not items:
        raise ZooError(f"no checkpoints to write to {uri}")
    names: dict[str, str] = {}
    for c in items:
        name = TRIAL_NAME.sub("_", c.id).strip("._") or "trial"
        if name in names:
            raise ZooError(
                f"checkpoint ids {names[name]!r} and {c.id!r} map to the same trial folder {name!r}"
            )
        names[name] = c.id

    for name, c in zip(names, items, strict=True):
        epoch = int(c.hyperparameters.get("epoch", c.hyperparameters.get("epochs", 1)))
        state = {}
        for i, layer in enumerate(c.layers):
            state[f"module_list.{2 * i}.weight"] = torch.from_numpy(np.array(layer.weight, dtype=np.float32))
            if layer.bias is not None:
                state[f"module_list.{2 * i}.bias"] = torch.from_numpy(np.array(layer.bias, dtype=np.float32))
        buf = io.BytesIO()
        torch.save(state, buf)
        trial = storage.join(uri, name)
        storage.write_bytes_atomic(
            storage.join(trial, f"checkpoint_{epoch:06d}", "checkpoints"), buf.getvalue()
        )

        line = {"training_iteration": epoch, "epoch": epoch}
        inverse = {prop: key for key, prop in RESULT_PROPERTIES.items()}
        for prop, value in c.properties.items():
            if prop != "generalization_gap" and value is not None:
                line[inverse.get(prop, prop)] = float(value)
        storage.write_bytes_atomic(storage.join(trial, "result.json"), (json.dumps(line) + "\n").encode())

        params = {"model::type": c.family, "dataset::name": c.dataset}
        for key, value in c.hyperparameters.items():
            if key == "epoch":
                continue
            params[key if "::" in key else PARAM_KEYS.get(key, f"training::{key}")] = value
        storage.write_bytes_atomic(storage.join(trial, "params.json"), json.dumps(params, indent=2).encode())

    config = {}
    datasets = {c.dataset for c in items}
    families = {c.family for c in items}
    if len(datasets) == 1:
        config["dataset::name"] = datasets.pop()
    if len(families) == 1:
        config["model::type"] = families.pop()
    storage.write_bytes_atomic(storage.join(uri, "config.json"), json.dumps(config, indent=2).encode())
