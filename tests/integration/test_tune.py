"""A 2×2 sweep (chunk size × λ) through the S3 server with MLflow parent/child runs, ASHA and resume."""

import pytest
from conftest import new_bucket, run_then_kill

from pipeline import tracking
from pipeline.config import debug, from_dict
from pipeline.tune import SweepSpec, run_sweep

pytestmark = pytest.mark.integration

GRID = {"chunk_sizes": (4, 8), "invariance_weights": (0.0, 0.5)}


@pytest.fixture(scope="module")
def zoo_bucket(ray_instance, s3_server):
    from pipeline.generate import make_zoo

    bucket = new_bucket(s3_server)
    make_zoo(f"{bucket}/zoo", preset="tiny", seed=0)
    return bucket


def _base(bucket, tmp_path):
    return from_dict(
        {
            "zoo": f"{bucket}/zoo",
            "storage": f"{bucket}/runs",
            "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "num_workers": 1,
            # The paper's encoder, without per-layer statistics: what is tested is Tune's plumbing, not
            # the encoder, and with them the trials tie more often on 5 validation networks.
            "layer_statistics": False,
        },
        debug(),
    )


def _children(summary):
    return tracking.child_runs(summary["tracking_uri"], summary["parent_run_id"])


def test_grid_sweep_creates_parent_and_child_runs_and_records_how_each_trial_ended(zoo_bucket, tmp_path):
    # One trial at a time: ASHA's rung comparisons then happen in a fixed order.
    spec = SweepSpec(**GRID, max_epochs=4, grace_period=1, max_concurrent_trials=1, name="grid")
    summary = run_sweep(_base(zoo_bucket, tmp_path), spec, log=lambda _: None)

    trials = summary["trials"]
    assert len(trials) == 4
    assert {(t["chunk_size"], t["invariance_weight"]) for t in trials} == {
        (4, 0.0),
        (4, 0.5),
        (8, 0.0),
        (8, 0.5),
    }
    assert summary["best_config"]["chunk_size"] in (4, 8)
    assert summary["best_val_kendall_tau"] == max(t["best_val_kendall_tau"] for t in trials)
    # Whether ASHA stops a trial here depends on validation τ over the tiny zoo's 5 validation networks,
    # which often ties, so a stop is not guaranteed; tests/unit/test_sweep.py pins the stopping rule
    # itself. Here: every trial ended one of the two ways, and its record says which.
    for t in trials:
        assert t["status"] in ("completed", "stopped early"), t
        if t["status"] == "completed":  # ran every epoch, then the driver evaluated it on the test set
            assert t["epochs"] == 4 and t["test_kendall_tau"] is not None, t
        else:  # stopped at a rung (the last epoch is one), before the test evaluation
            assert 1 <= t["epochs"] <= 4 and t["test_kendall_tau"] is None, t

    children = _children(summary)
    assert len(children) == 4
    assert {(c.data.params["chunk_size"], c.data.params["invariance_weight"]) for c in children} == {
        ("4", "0.0"),
        ("4", "0.5"),
        ("8", "0.0"),
        ("8", "0.5"),
    }
    status = {c.data.tags["mlflow.runName"].rsplit("-", 1)[-1]: c.info.status for c in children}
    for t in trials:  # stopped trials are KILLED, finished ones FINISHED; none left dangling
        assert status[t["trial_id"]] == ("KILLED" if t["status"] == "stopped early" else "FINISHED"), t
    client = tracking._client(summary["tracking_uri"])
    artifacts = {a.path for a in client.list_artifacts(summary["parent_run_id"])}
    assert {"trials.json", "trials.txt", "val_tau_heatmap.png"} <= artifacts
    # The sweep and each trial name the zoo as their training dataset; no trial is a registered model.
    parent = client.get_run(summary["parent_run_id"])
    assert [d.dataset.source for d in parent.inputs.dataset_inputs] == [f'{{"uri": "{zoo_bucket}/zoo"}}']
    assert all(len(c.inputs.dataset_inputs) == 1 for c in children)
    assert not client.search_registered_models()


def test_an_interrupted_sweep_resumes_instead_of_starting_over(zoo_bucket, tmp_path, ray_instance):
    base = _base(zoo_bucket, tmp_path)
    spec = SweepSpec(**GRID, max_epochs=2, grace_period=2, max_concurrent_trials=1, name="resumable")
    uri = tracking.resolve_tracking_uri(base.tracking_uri)

    def a_trial_finished() -> bool:
        parent = tracking.find_run(uri, base.experiment, "resumable")
        return bool(parent) and any(c.info.status == "FINISHED" for c in tracking.child_runs(uri, parent))

    run_then_kill(ray_instance, run_sweep, (base, spec), a_trial_finished, "a finished trial")
    parent = tracking.find_run(uri, base.experiment, "resumable")

    summary = run_sweep(base, spec, log=lambda _: None)
    assert summary["parent_run_id"] == parent
    assert len(summary["trials"]) == 4
    names = [c.data.tags["mlflow.runName"] for c in _children(summary)]
    # Restored, not restarted: the finished trial did not run again (one child run per trial).
    assert len(names) == len(set(names))
    assert sum(1 for c in _children(summary) if c.info.status == "FINISHED") >= 4 - sum(
        1 for t in summary["trials"] if t["status"] != "completed"
    )
