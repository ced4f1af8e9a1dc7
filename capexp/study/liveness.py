"""Dead workers: a trial whose process died (seen in /proc, or by a stopped database heartbeat) is
failed, queued to run again, and its MLflow run ended KILLED."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capexp.study.plan import Plan
from capexp.study.storage import MAX_RETRY, frozen, quiet_experimental, trial_id
from capexp.tracking import ATTR_WORKER, TAG_PARENT, TAG_STUDY, TAG_TRIAL


log = logging.getLogger("capexp")


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is absent); 'Z' for a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return "Z" if fields[0] in ("Z", "X") else fields[19]


def worker_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def _is_dead(worker: str) -> bool:
    """Whether `worker` (host:pid:start) was a process on this machine that no longer runs."""
    host, pid_text, started = worker.rsplit(":", 2)
    if host != socket.gethostname():
        return False  # another machine's: PostgreSQL heartbeats take care of it
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    now = _start_time(pid)
    return now == "Z" or (bool(started) and bool(now) and now != started)


def retry(study, trial) -> None:
    """Queue a copy of `trial` (same params) to run again, as Optuna does for heartbeat-stale trials."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with quiet_experimental():
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


def reap(study, storage, plan: Plan) -> None:
    """Fail (and queue again) the running trials of dead workers, end their runs KILLED: those
    of this machine's dead processes, and those whose database heartbeat stopped."""
    import optuna
    from optuna.trial import TrialState

    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)  # calls on_stale for each; a no-op for journal files
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(ATTR_WORKER)
        if not worker or not _is_dead(worker):
            continue
        try:
            if not storage.set_trial_state_values(trial_id(storage, plan.name, trial.number), state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        log.warning("study %s: trial %d's worker (%s) died; the trial is failed and queued to run again.",
                    plan.name, trial.number, worker)
        on_stale(plan)(study, frozen(storage, plan.name, trial.number))
    _end_orphan_runs(study, plan)


def _end_orphan_runs(study, plan: Plan) -> None:
    """End KILLED the RUNNING runs of FAIL trials: a process killed while it reaped a dead worker's trial
    (after failing it, before ending its run) leaves such a run behind."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    failed = {str(t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name(plan.experiment) if failed else None
    if exp is None:
        return
    query = (f"tags.`{TAG_STUDY}` = '{plan.name}' and tags.`{TAG_PARENT}` = '{plan.parent_run_id}' "
             f"and attributes.status = 'RUNNING'")
    for run in client.search_runs([exp.experiment_id], filter_string=query):
        if run.data.tags.get(TAG_TRIAL) in failed:
            client.set_terminated(run.info.run_id, "KILLED")


def on_stale(plan: Plan) -> Callable[[Any, Any], None]:
    """What happens to a trial whose worker died: queued again, its MLflow run ended KILLED."""

    def handle(study, trial) -> None:
        retry(study, trial)
        _end_dead_runs(plan, trial.number)

    return handle


def _end_dead_runs(plan: Plan, number: int) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name(plan.experiment)
    if exp is None:
        return
    query = (f"tags.`{TAG_STUDY}` = '{plan.name}' and tags.`{TAG_TRIAL}` = '{number}' "
             f"and tags.`{TAG_PARENT}` = '{plan.parent_run_id}' and attributes.status = 'RUNNING'")
    for run in client.search_runs([exp.experiment_id], filter_string=query):
        client.set_terminated(run.info.run_id, "KILLED")
