"""The sweep's early stopping and spec checks, without a Ray cluster.

ASHA's decisions are fed results directly, the way Tune's controller feeds them: what is pinned here
is our configuration (a weak trial stops at the grace period; a strong one is never stopped at its
last epoch, so it reaches its test evaluation), not Ray's bookkeeping.
"""

from types import SimpleNamespace

import pytest

from pipeline.tune import METRIC, SweepSpec, asha_scheduler

CONTINUE, STOP = "CONTINUE", "STOP"


def _scheduler(**spec):
    scheduler = asha_scheduler(SweepSpec(**spec))
    scheduler.set_search_properties(METRIC, "max")  # what Tune does with TuneConfig(metric, mode)
    return scheduler


def _report(scheduler, trial, epoch: int, tau: float) -> str:
    return scheduler.on_trial_result(None, trial, {"training_iteration": epoch, METRIC: tau})


def _trial(scheduler, trial_id: str):
    trial = SimpleNamespace(trial_id=trial_id)
    scheduler.on_trial_add(None, trial)
    return trial


def test_a_weak_trial_stops_at_the_grace_period_and_a_strong_one_runs_every_epoch():
    scheduler = _scheduler(max_epochs=4, grace_period=1)
    first, weak, strong = (_trial(scheduler, t) for t in ("first", "weak", "strong"))
    assert [_report(scheduler, first, e, 0.5) for e in range(1, 5)] == [CONTINUE] * 4
    assert _report(scheduler, weak, 1, 0.1) == STOP
    # Its last epoch is a rung too, but a trial above the median there goes on to its test evaluation.
    assert [_report(scheduler, strong, e, 0.6) for e in range(1, 5)] == [CONTINUE] * 4


def test_no_trial_stops_before_the_grace_period():
    scheduler = _scheduler(max_epochs=6, grace_period=2)
    good, weak = _trial(scheduler, "good"), _trial(scheduler, "weak")
    assert [_report(scheduler, good, e, 0.5) for e in (1, 2)] == [CONTINUE, CONTINUE]
    assert _report(scheduler, weak, 1, -0.9) == CONTINUE
    assert _report(scheduler, weak, 2, -0.9) == STOP


def test_a_grace_period_past_the_last_epoch_is_clipped_to_it():
    scheduler = _scheduler(max_epochs=2, grace_period=5)
    good, weak = _trial(scheduler, "good"), _trial(scheduler, "weak")
    assert [_report(scheduler, good, e, 0.5) for e in (1, 2)] == [CONTINUE, CONTINUE]
    assert [_report(scheduler, weak, e, 0.0) for e in (1, 2)] == [CONTINUE, STOP]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"search": "random"}, "grid or optuna"),
        ({"chunk_sizes": ()}, "at least one chunk size"),
        ({"invariance_weights": (-0.1,)}, "invariance weights >= 0"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"grace_period": 0}, "grace_period"),
        ({"max_concurrent_trials": 0}, "max_concurrent_trials"),
    ],
)
def test_bad_sweep_specs_are_rejected_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        SweepSpec(**spec).validate()


def test_trials_are_not_handed_the_drivers_credentials(monkeypatch):
    """Ray Tune would copy them into each trial's runtime environment, which Ray logs in clear."""
    from ray.tune.execution.class_cache import _ActorClassCache

    from pipeline.tune import _keep_credentials_out_of_runtime_envs

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-canary")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-canary")

    class Trainable:
        pass

    _keep_credentials_out_of_runtime_envs()
    remote = _ActorClassCache().get(Trainable)
    shipped = str(remote._default_options.get("runtime_env"))
    assert "canary" not in shipped and "PL_DISABLE_FORK" in shipped
