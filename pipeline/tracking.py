"""MLflow: the only module that imports mlflow.

The driver opens one run per training (a child of the sweep's parent run under Tune); rank 0 of
the Train worker group logs per-epoch metrics into that run by id; the driver logs the final
metrics and artifacts. Secrets never reach MLflow: only config values are logged as params, and
the config holds URIs, never credentials.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from pipeline.config import repo_root

# Config keys that are never logged (none hold secrets today; keep the list as the one place to add them).
UNLOGGED_KEYS: frozenset[str] = frozenset()


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file beside the repo (absolute, as MLflow needs)."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{os.path.join(repo_root(), 'runs', 'mlflow.db')}"
    )


def resolve_tracking_uri(uri: str | None) -> str:
    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///") :]) or ".", exist_ok=True)
    return uri


def check_reachable(tracking_uri: str, timeout_s: float = 10.0) -> None:
    """Refuse, before a job does any work, a tracking server that does not answer (ValueError). Any HTTP
    answer counts as reachable (a server behind authentication may refuse /health); a local store is
    always there."""
    import urllib.error
    import urllib.request

    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ValueError(
            f"the MLflow tracking server at {tracking_uri} does not answer ({reason}); start it, or point "
            "MLFLOW_TRACKING_URI / --tracking-uri at another (unset, runs go to the local SQLite store)"
        ) from None


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", repo_root(), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


# The experiment tag MLflow 3's UI reads to choose its view: without it an experiment opens in the GenAI
# view (traces, prompts); this value opens the training-runs view, with metrics, parameters and models.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"


def _artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store live beside its database file (``mlartifacts/``), wherever a job was
    started from; MLflow's own default is ``./mlruns`` under the working directory. A tracking server
    decides for itself (None)."""
    if tracking_uri.startswith("sqlite:///"):
        return os.path.join(os.path.dirname(tracking_uri[len("sqlite:///") :]), "mlartifacts")
    return None


def experiment_id(tracking_uri: str, name: str) -> str:
    """The id of the experiment ``name``, created when missing, and marked as a training experiment."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        exp_id = client.create_experiment(name, artifact_location=_artifact_root(tracking_uri))
    else:
        exp_id = exp.experiment_id
    if exp is None or EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND)
    return exp_id


def start_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: dict,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Create a run (a child when ``parent_run_id`` is given), log params and tags; return its id."""
    import mlflow

    client = _client(tracking_uri)
    exp_id = experiment_id(tracking_uri, experiment)
    all_tags = {"code_version": code_version(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    logged = {k: ("" if v is None else str(v))[:6000] for k, v in params.items() if k not in UNLOGGED_KEYS}
    batch = [mlflow.entities.Param(k, v) for k, v in sorted(logged.items())]
    for i in range(0, len(batch), 100):
        client.log_batch(run.info.run_id, params=batch[i : i + 100])
    return run.info.run_id


def log_zoo_input(tracking_uri: str, run_id: str, zoo_uri: str, digest: str, profile: dict) -> None:
    """Record the zoo as the run's training dataset (the UI's Dataset column): its URI as the source, the
    zoo's fingerprint as the digest, and ``profile`` (format, counts) as what it holds."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=zoo_uri.rstrip("/").rsplit("/", 1)[-1] or zoo_uri,
        digest=digest[:16],
        source_type="s3" if zoo_uri.startswith("s3://") else "local",
        source=json.dumps({"uri": zoo_uri}),
        profile=json.dumps(profile, sort_keys=True),
    )
    _client(tracking_uri).log_inputs(
        run_id, [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
    )


def find_run(tracking_uri: str, experiment: str, run_name: str) -> str | None:
    """The id of the newest unfinished-or-finished run with this name (to resume into it)."""
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'", max_results=1
    )
    return runs[0].info.run_id if runs else None


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    client = _client(tracking_uri)
    now = int(time.time() * 1000)
    items = [
        mlflow.entities.Metric(k, float(v), now, step or 0)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and v == v  # NaN metrics are skipped, not logged as garbage
    ]
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i : i + 500])


def set_tags(tracking_uri: str, run_id: str, tags: dict[str, str]) -> None:
    client = _client(tracking_uri)
    for k, v in tags.items():
        client.set_tag(run_id, k, str(v))


def log_artifact(tracking_uri: str, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
    client = _client(tracking_uri)
    if os.path.isdir(local_path):
        client.log_artifacts(run_id, local_path, artifact_path)
    else:
        client.log_artifact(run_id, local_path, artifact_path)


def run_status(tracking_uri: str, run_id: str) -> str:
    """RUNNING, FINISHED, FAILED, KILLED or SCHEDULED; ValueError for a run the store does not hold."""
    from mlflow.exceptions import MlflowException

    try:
        return _client(tracking_uri).get_run(run_id).info.status
    except MlflowException as e:
        raise ValueError(f"run {run_id} in {tracking_uri}: {e.message}") from e


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


def download_artifacts(tracking_uri: str, run_id: str, artifact_path: str, dst: str) -> str:
    return _client(tracking_uri).download_artifacts(run_id, artifact_path, dst)


def ui_command(tracking_uri: str) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri}"


# MLflow 3's UI opens an experiment in its GenAI view unless the page is asked for its training view.
TRAINING_VIEW = "?workflowType=machine_learning"


def where_to_look(tracking_uri: str, run_id: str) -> str:
    """How a user opens this run in the UI's training view: its page on a tracking server, or the command
    that serves a local store and the page to open then."""
    experiment = _client(tracking_uri).get_run(run_id).info.experiment_id
    page = f"#/experiments/{experiment}/runs/{run_id}{TRAINING_VIEW}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"{ui_command(tracking_uri)}   # then open http://127.0.0.1:5000/{page}"


def terminate_children(tracking_uri: str, parent_run_id: str, status: str = "KILLED") -> int:
    """End child runs still marked RUNNING (trials that Tune stopped early); return how many."""
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for r in runs:
        client.set_terminated(r.info.run_id, status=status)
    return len(runs)


def child_runs(tracking_uri: str, parent_run_id: str) -> list:
    client = _client(tracking_uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


# --- The encoder as a registered MLflow model -------------------------------------------------------------
# The exported encoder folder (pipeline.export) doubles as an MLflow model: an ``MLmodel`` file beside its
# files declares a pyfunc flavour loaded by ``_load_pyfunc`` below (no pickle), and a signature: a table of
# zoo URIs in, one prediction per checkpoint out. Registering a run's folder gives users versions
# (``models:/NAME/VERSION``) that ``jobs/predict.py --encoder`` and ``mlflow.pyfunc.load_model`` both take.

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+|latest)|@(?P<alias>[\w-]+))/?$")


def write_model_spec(directory: str, run_id: str, artifact_path: str = "encoder") -> None:
    """Make the exported encoder in ``directory`` an MLflow pyfunc model (writes ``MLmodel``)."""
    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "zoo")]),
        outputs=Schema(
            [ColSpec("string", c) for c in ("id", "family", "dataset")] + [ColSpec("double", "prediction")]
        ),
    )
    model = Model(artifact_path=artifact_path, run_id=run_id, signature=signature)
    mlflow.pyfunc.add_to_model(model, loader_module="pipeline.tracking", data=".")
    model.save(os.path.join(directory, "MLmodel"))


def register_encoder(
    tracking_uri: str, run_id: str, name: str, tags: dict[str, str], artifact_path: str = "encoder"
) -> str:
    """Register the run's encoder folder as a new version of model ``name``; returns ``models:/NAME/VERSION``."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.create_registered_model(
            name, description="SNE encoders: predict a property of trained networks from their weights"
        )
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(
        name, source, run_id=run_id, tags={k: str(v) for k, v in tags.items()}
    )
    return f"models:/{name}/{version.version}"


def download_model(tracking_uri: str, uri: str, dst: str) -> str:
    """Download the files of a registered encoder ``models:/NAME/VERSION`` (or ``/latest``, ``@ALIAS``)."""
    import mlflow.artifacts

    m = MODEL_URI.match(uri)
    if m is None:
        raise ValueError(
            f"{uri!r} is not a registered model URI: models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS"
        )
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    name, version = m.group("name"), m.group("version")
    try:
        if m.group("alias"):
            version = client.get_model_version_by_alias(name, m.group("alias")).version
        elif version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise ValueError(f"no version of the registered model {name!r} in {tracking_uri}")
            version = str(max(int(v.version) for v in versions))
        source = client.get_model_version_download_uri(name, version)
    except MlflowException as e:
        raise ValueError(f"{uri} in {tracking_uri}: {e.message}") from e
    return mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=dst, tracking_uri=tracking_uri)


class _EncoderModel:
    """What ``mlflow.pyfunc.load_model`` returns for a registered encoder: ``predict`` takes a DataFrame with
    a ``zoo`` column of zoo URIs and returns one row per readable checkpoint."""

    def __init__(self, path: str) -> None:
        self.path = path

    def predict(self, model_input, params=None):
        import pandas as pd

        from pipeline.predict import predict_zoo

        rows = []
        for zoo in model_input["zoo"]:
            result = predict_zoo([self.path], str(zoo))
            rows += [{k: r[k] for k in ("id", "family", "dataset", "prediction")} for r in result["rows"]]
        return pd.DataFrame(rows, columns=["id", "family", "dataset", "prediction"])


def _load_pyfunc(data_path: str, model_config=None) -> _EncoderModel:
    """MLflow's pyfunc loader hook (``loader_module`` in ``MLmodel``)."""
    return _EncoderModel(data_path)
