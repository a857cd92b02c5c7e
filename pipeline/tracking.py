"""MLflow: the only module that imports mlflow.

The driver opens one run per training (a child of the sweep's parent run under Tune); rank 0 of
the Train worker group logs per-epoch metrics into that run by id; the driver logs the final
metrics and artifacts. Secrets never reach MLflow: only config values are logged as params, and
the config holds URIs, never credentials.
"""

from __future__ import annotations

import os
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
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    all_tags = {"code_version": code_version(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    logged = {k: ("" if v is None else str(v))[:6000] for k, v in params.items() if k not in UNLOGGED_KEYS}
    batch = [mlflow.entities.Param(k, v) for k, v in sorted(logged.items())]
    for i in range(0, len(batch), 100):
        client.log_batch(run.info.run_id, params=batch[i : i + 100])
    return run.info.run_id


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


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)


def download_artifacts(tracking_uri: str, run_id: str, artifact_path: str, dst: str) -> str:
    return _client(tracking_uri).download_artifacts(run_id, artifact_path, dst)


def ui_command(tracking_uri: str) -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri}"


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
