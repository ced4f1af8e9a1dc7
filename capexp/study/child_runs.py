"""Child runs of a study's parent that are not Optuna trials: the control outside the space and
the finalists. Each is found again by its tags, so a rerun resumes them as it resumes trials: a
finished run is never run twice; one whose process died (or that was stopped) runs again."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from capexp.errors import CapexpError, TrainingDiverged, warn
from capexp.spec.schema import Spec
from capexp.study.liveness import is_dead, worker_id
from capexp.study.pareto import objective_value as objective_of
from capexp.study.plan import StudyPlan
from capexp.study.progress import run_line
from capexp.study.storage import MAX_RETRY
from capexp.tracking import TAG_STUDY
from capexp.tracking.names import TAG_WORKER
from capexp.tracking.study_runs import end_killed, study_runs

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["child_run", "child_to_run", "objective_value"]

log = logging.getLogger("capexp")


def _settle(client: MlflowClient, runs: Sequence[Run]) -> tuple[str, Run | None]:
    """Where a child run stands from its attempts (oldest first): ("done", the finished run),
    ("elsewhere", the running run) while a live process runs it, ("spent", the last attempt) after
    MAX_RETRY failed or killed attempts, else ("run", None). A dead process's RUNNING run is ended KILLED."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        return "done", finished[-1]
    for run in runs:
        if run.info.status == "RUNNING":
            worker = run.data.tags.get(TAG_WORKER, "")
            if not worker or not is_dead(worker):
                return "elsewhere", run
            log.warning("run %s's process (%s) died; it is ended KILLED and runs again.", run.info.run_name, worker)
            end_killed(client, run.info.run_id)
    return ("spent", runs[-1]) if len(runs) >= MAX_RETRY else ("run", None)


def objective_value(client: MlflowClient, run: Run, plan: StudyPlan) -> float:
    """The study's (first) objective for `run`: its best per-epoch value of the objective metric
    (validation; the last value for run totals such as `train_minutes`)."""
    history = client.get_metric_history(run.info.run_id, plan.metric)
    value = objective_of(plan.metric, plan.direction, [m.value for m in history])
    if value is None:
        raise CapexpError(
            f"study {plan.name}: run {run.info.run_name} logs no {plan.metric!r}, the study's objective metric. "
            f"Set `objective.metric` in the search-space file to a metric the runs log and use a new --name."
        )
    return value


def _standing(plan: StudyPlan, tags: dict[str, str]) -> tuple[MlflowClient, str, Run | None]:
    """A client on the study's store, and where the child run tagged `tags` stands (`_settle`)."""
    from mlflow import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    return client, *_settle(client, study_runs(client, plan.experiment, plan.name, parent=plan.parent_run_id, tags=tags))


def child_to_run(plan: StudyPlan, tags: dict[str, str]) -> bool:
    """Whether the child run tagged `tags` has yet to run here: not finished, not running in a live process,
    not out of retries."""
    return _standing(plan, tags)[1] == "run"


def child_run(plan: StudyPlan, spec: Spec, tags: dict[str, str], label: str, values: dict[str, Any],
              start: bool = True) -> Run | None:
    """The finished child run tagged `tags` (with the study's name), run now from `spec` unless it
    ran already (or `start` is False); None when it failed (diverged, out of memory, or MAX_RETRY
    attempts), runs elsewhere or did not run. `label` and `values` name it in the progress line
    printed when it ends."""
    client, state, run = _standing(plan, tags)
    if state == "done":
        return run
    if state == "elsewhere":
        assert run is not None
        warn(f"study {plan.name}: {label} (run {run.info.run_id}) is running in another process "
             f"({run.data.tags.get(TAG_WORKER, '?')}); run the same command again once it has ended.")
        return None
    if state == "spent":
        warn(f"study {plan.name}: {label} failed or was stopped {MAX_RETRY} times; it is left out (see its runs).")
        return None
    return _run(plan, client, spec, tags, label, values) if start else None


def _run(plan: StudyPlan, client: MlflowClient, spec: Spec, tags: dict[str, str], label: str,
         values: dict[str, Any]) -> Run | None:
    import torch

    from capexp.training.run import run_spec

    try:
        result = run_spec(spec, origin=f"{plan.base} (study {plan.name}, {label})", experiment=plan.experiment,
                          tracking_uri=plan.tracking_uri, parent_run_id=plan.parent_run_id,
                          tags={TAG_STUDY: plan.name, TAG_WORKER: worker_id(), **tags})
    except (TrainingDiverged, torch.cuda.OutOfMemoryError) as e:
        reason = str(e) if isinstance(e, TrainingDiverged) else f"out of memory: {e}"
        print(run_line(label, f"FAILED ({reason})", values), file=sys.stderr, flush=True)
        return None
    run = client.get_run(result.run_id)
    print(run_line(label, f"{plan.metric} {objective_value(client, run, plan):.4f}", values), file=sys.stderr, flush=True)
    return run
