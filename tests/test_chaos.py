"""Chaos: a 2-worker study survives SIGKILLed workers and reruns with nothing lost, duplicated
or left RUNNING, an intact MLflow SQLite store and a bit-identical feature cache
(benchmarks/chaos_study.py, smaller)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from chaos_study import run_chaos  # noqa: E402


@pytest.mark.slow
def test_study_survives_killed_workers(tmp_path: Path) -> None:
    figures = run_chaos(tmp_path / "chaos", trials=4, interval=5.0, max_kills=2, seed=1)
    print(figures)
    assert figures["problems"] == []
    assert figures["kills"] == 2 and figures["complete"] + figures["pruned"] in (4, 5)
    assert figures["integrity"] == "ok"


def test_a_run_left_running_by_a_killed_reaper_is_ended_killed(tmp_path: Path, tracking_uri: str) -> None:
    """A process killed while it reaps a dead worker's trial (failed, retry queued, run not yet ended)
    leaves a RUNNING run behind; the next reap ends it KILLED (found by the chaos study)."""
    import mlflow
    import optuna

    from capexp.study import TAG_TRIAL, open_storage
    from capexp.study.liveness import reap as _reap
    from capexp.study.plan import StudyPlan as _Plan
    from capexp.tracking import TAG_STUDY

    storage = open_storage(str(tmp_path / "orphan.journal"), "orphan")
    study = optuna.create_study(study_name="orphan", storage=storage)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    done = study.ask()
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment("capexp")
    parent = client.create_run(exp, tags={TAG_STUDY: "orphan"}).info.run_id
    child = lambda n: client.create_run(exp, tags={TAG_STUDY: "orphan", TAG_TRIAL: str(n),  # noqa: E731
                                                   "mlflow.parentRunId": parent}).info.run_id
    orphan, running = child(0), child(done.number)
    plan = _Plan(name="orphan", storage=None, base="b", snapshot="s", space=None, metric="val_loss",  # type: ignore[arg-type]
                 direction="minimize", num_epochs=1, trials=2, experiment="capexp", tracking_uri=tracking_uri,
                 parent_run_id=parent, heartbeat_interval=60, seed_offset=0, threads=0, log_level=20)
    _reap(study, storage, plan)
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(running).info.status == "RUNNING"  # a live trial's run is left alone


def test_a_dead_workers_trial_failed_by_a_reaper_killed_before_queueing_it_is_retried_once(tmp_path: Path, tracking_uri: str) -> None:
    """The reaper marks a dead worker's trial as owed a retry before failing it; a reaper killed
    between the two steps leaves a FAIL trial that the next reap queues again, once. The copy
    carries no trace of the dead worker (whose id would make it look dead while a live worker starts it)."""
    import optuna

    from capexp.study import open_storage
    from capexp.study.liveness import reap as _reap
    from capexp.study.plan import StudyPlan as _Plan
    from capexp.tracking import ATTR_RETRY_OWED, ATTR_RUN_NAME, ATTR_WORKER

    storage = open_storage(str(tmp_path / "owed.journal"), "owed")
    study = optuna.create_study(study_name="owed", storage=storage)
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    owed = study.ask({"x": dist})
    owed.set_user_attr(ATTR_WORKER, "elsewhere:1:1")
    owed.set_user_attr(ATTR_RUN_NAME, "owed-000")
    owed.set_user_attr(ATTR_RETRY_OWED, True)
    study.tell(owed, state=optuna.trial.TrialState.FAIL)  # what a reaper killed right after failing it leaves
    diverged = study.ask({"x": dist})
    study.tell(diverged, state=optuna.trial.TrialState.FAIL)  # a genuine failure: never retried
    plan = _Plan(name="owed", storage=str(tmp_path / "owed.journal"), base="b", snapshot="s", space=None,  # type: ignore[arg-type]
                 metric="val_loss", direction="minimize", num_epochs=1, trials=2, experiment="capexp",
                 tracking_uri=tracking_uri, parent_run_id="none", heartbeat_interval=60, seed_offset=0, threads=0,
                 log_level=20)
    _reap(study, storage, plan)
    _reap(study, storage, plan)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [(t.system_attrs["retry_history"], t.params) for t in waiting] == [([owed.number], owed.params)]
    assert waiting[0].user_attrs == {ATTR_RUN_NAME: "owed-000"}  # the run name stays, the dead worker does not
