"""Dead workers: a trial whose process died (seen in /proc, or by a stopped database heartbeat) is
failed, queued to run again, and its MLflow run ended KILLED (tagged optuna.state=FAIL)."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capexp.study.plan import StudyPlan
from capexp.study.storage import MAX_RETRY, quiet_experimental, storage_label, trial_id
from capexp.tracking import ATTR_ERROR, ATTR_RETRY_OWED, ATTR_RUN_ID, ATTR_WORKER, TAG_TRIAL
from capexp.tracking.study_runs import end_killed, study_runs


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


def is_dead(worker: str) -> bool:
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


_NOT_INHERITED = (ATTR_WORKER, ATTR_RUN_ID, ATTR_ERROR, ATTR_RETRY_OWED)  # about the attempt, not the trial


def retry(study, trial) -> None:
    """Queue a copy of `trial` (same params and run name) to run again, as Optuna's
    RetryHeartbeatStaleTrialCallback does (at most MAX_RETRY times per original). The copy keeps
    nothing of the attempt: with the dead worker's id, it would look dead while a live worker starts it."""
    import optuna

    system_attrs = {"failed_trial": trial.number, **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs.get("retry_history", []), trial.number]
    if len(system_attrs["retry_history"]) > MAX_RETRY:
        return
    study.add_trial(optuna.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={k: v for k, v in trial.user_attrs.items() if k not in _NOT_INHERITED}, system_attrs=system_attrs,
    ))


def _lock(plan: StudyPlan):
    """One machine's processes reap one study in turn (a file lock in the temporary folder)."""
    from filelock import FileLock

    key = hashlib.sha256(f"{storage_label(plan.storage, plan.name)}|{plan.name}".encode()).hexdigest()[:16]
    return FileLock(str(Path(tempfile.gettempdir()) / f"capexp-reap-{key}.lock"), mode=0o666)


def reap(study, storage, plan: StudyPlan) -> None:
    """Fail (and queue again) the running trials of dead workers, end their runs KILLED: those
    of this machine's dead processes, and those whose database heartbeat stopped.

    A trial is marked as owed a retry before it is failed, and every owed trial without a retry
    gets one here, so a reaper killed between failing a trial and queueing it loses nothing.
    """
    import optuna
    from optuna.trial import TrialState

    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)  # calls on_stale for each; a no-op for journal files
    with _lock(plan):
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.user_attrs.get(ATTR_WORKER)
            if not worker or not is_dead(worker):
                continue
            number = trial_id(storage, plan.name, trial.number)
            try:
                storage.set_trial_user_attr(number, ATTR_RETRY_OWED, True)
                if not storage.set_trial_state_values(number, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another process got there first
            log.warning("study %s: trial %d's worker (%s) died; the trial is failed and queued to run again.",
                        plan.name, trial.number, worker)
        _retry_owed(study, plan)
    _end_orphan_runs(study, plan)


def _retry_owed(study, plan: StudyPlan) -> None:
    """Queue again each failed trial owed a retry that has none yet, and end its runs KILLED."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}
    for trial in trials:
        spent = len(trial.system_attrs.get("retry_history", [])) >= MAX_RETRY  # retry() would not queue it
        if trial.state == TrialState.FAIL and trial.user_attrs.get(ATTR_RETRY_OWED) and trial.number not in retried \
                and not spent:
            on_stale(plan)(study, trial)


def _end_orphan_runs(study, plan: StudyPlan) -> None:
    """End KILLED the RUNNING runs of FAIL trials: a process killed while it reaped a dead worker's trial
    (after failing it, before ending its run) leaves such a run behind."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    failed = {str(t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    if not failed:
        return
    client = MlflowClient(plan.tracking_uri)
    for run in study_runs(client, plan.experiment, plan.name, parent=plan.parent_run_id, status="RUNNING"):
        if run.data.tags.get(TAG_TRIAL) in failed:
            end_killed(client, run.info.run_id)


def on_stale(plan: StudyPlan) -> Callable[[Any, Any], None]:
    """What happens to a trial whose worker died: queued again, its MLflow run ended KILLED."""

    def handle(study, trial) -> None:
        retry(study, trial)
        _end_dead_runs(plan, trial.number)

    return handle


def _end_dead_runs(plan: StudyPlan, number: int) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    for run in study_runs(client, plan.experiment, plan.name, parent=plan.parent_run_id, tags={TAG_TRIAL: str(number)},
                          status="RUNNING"):
        end_killed(client, run.info.run_id)
