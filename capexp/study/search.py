"""`capexp study`: set up (or resume) a study around a base spec, run its workers, summarise it."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from capexp.spec.checks import check_spec
from capexp.data import check_inputs
from capexp.errors import CapexpError, warn
from capexp.paths import project_file
from capexp.study.gpus import choose_gpus
from capexp.study.pareto import RUN_TOTALS, Objective, objective_list
from capexp.study.params import Param, active_values
from capexp.study.space import Categorical, GridSampler, SearchSpace, load_space
from capexp.spec.schema import Spec, metric_mode
from capexp.spec.loading import flatten, load_spec, spec_hash
from capexp.stopping import stoppable
from capexp.study.keep_models import check_keep_models
from capexp.study.liveness import on_stale, reap
from capexp.study.plan import StudyPlan, StudySummary
from capexp.study.report import parent_run, summarize
from capexp.study.storage import grid_points_run, open_storage, quiet_experimental, storage_label, trial_counts
from capexp.study.trials import console_warnings_only, run_workers, work
from capexp.study.control import control_values, enqueue_control, run_outside_control
from capexp.study.finalists import check_finalists, run_finalists
from capexp.tracking import (
    ATTR_BASE, ATTR_BASE_HASH, ATTR_METRIC, ATTR_RUN_NAME, ATTR_SPACE, DEFAULT_EXPERIMENT, experiment_id, use_store,
)

log = logging.getLogger("capexp")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_base() -> Path:
    """The quickstart spec: the base when `--spec` is left out."""
    return project_file("experiments", "quickstart.json")


def _auto_objective(objective: Objective, spec: Spec) -> tuple[str, str]:
    metric = objective.metric
    if metric == "auto":
        metric = "cider" if spec.evaluation.coco_metrics and shutil.which("java") else "bertscore_f1"
    direction = objective.direction
    if direction == "auto":
        direction = "minimize" if metric_mode(metric) == "min" or metric in RUN_TOTALS else "maximize"
    return metric, direction


def _check_values(space: SearchSpace, base: Path, overrides: Sequence[str], origin: str) -> None:
    """Every choice (and range end) must make a valid spec from the base: fail now, not in trial 7."""
    for key, param in space.params.items():
        values = param.choices if isinstance(param, Categorical) else [param.low, param.high]
        turned_on = [f"{k}={json.dumps(allowed[0])}" for k, allowed in (param.when or {}).items()]
        for value in values:
            try:
                check_spec(load_spec(base, [*overrides, *turned_on, f"{key}={json.dumps(value)}"]), str(base))
            except CapexpError as e:
                raise CapexpError(f"{origin}: `params.{key}` value {json.dumps(value)} does not fit the base spec: {e}") from None


def _enqueue(study, paths: Sequence[Path], raw: SearchSpace, space: SearchSpace, depth: int) -> None:
    """Queue the search-space values of known specs (for example the seed's six) as the first trials."""
    for path in paths:
        spec = load_spec(path)
        flat = flatten(spec, sections=True)

        def encoded(key: str, param: Param) -> Any:
            try:
                return param.encode(raw.fit_value(key, flat.get(key), depth))
            except ValueError as e:
                raise CapexpError(
                    f"--enqueue {path}: `{key}` is {json.dumps(flat.get(key))}, which the search space cannot "
                    f"take ({e}). Add the value to the space's `params.{key}` or leave this spec out."
                ) from None

        params = active_values(space.params, flat, encoded)
        study.enqueue_trial(params, user_attrs={ATTR_RUN_NAME: spec.id}, skip_if_exists=True)


class _Setup(NamedTuple):
    """What a study's command resolves before it touches any storage."""

    raw: SearchSpace  # as written
    space: SearchSpace  # fitted to the base decoder's depth
    spec: Spec  # the base on the trial budget
    full: Spec  # the base at its own (full) budget: what finalists retrain
    depth: int
    origin: str
    objectives: tuple[tuple[str, str], ...]  # (metric, direction) each, "auto" resolved
    trials: int

    @property
    def metric(self) -> str:
        """The (first) objective's metric."""
        return self.objectives[0][0]

    @property
    def direction(self) -> str:
        """The (first) objective's direction."""
        return self.objectives[0][1]


def _setup(base: Path, space: Path | None, overrides: Sequence[str], trials: int) -> _Setup:
    """Load and check the space and the base (missing data fails here, not inside trial 0)."""
    from capexp.backbones import decoder_depth

    origin = str(space) if space is not None else "studies/default.json"
    raw = load_space(space)
    spec = load_spec(base, [*overrides, *raw.budget_overrides()])  # every trial runs on the space's budget
    check_spec(spec, str(base))
    check_inputs(spec, str(base))
    depth = decoder_depth(spec.gpt2_config.model, spec.gpt2_config.tokenizer)
    fitted = raw.fit_to_depth(depth, origin)
    _check_values(fitted, base, [*overrides, *raw.budget_overrides()], origin)
    objectives = tuple(_auto_objective(o, spec) for o in objective_list(fitted.objective))
    return _Setup(raw, fitted, spec, load_spec(base, overrides), depth, origin, objectives,
                  _grid_trials(fitted, trials, origin))


def _queue(study, setup: _Setup, name: str, enqueue: Sequence[Path],
           control: bool) -> tuple[_Setup, dict[str, Any] | None, bool]:
    """Queue the control (when inside the space), then the `enqueue` specs; return the setup (a grid
    study runs one trial more for a control inside it, so every grid point still runs), the control's
    values (None: no control) and whether it lies inside the space."""
    values = control_values(setup.spec, setup.space) if control else None
    inside = values is not None and enqueue_control(study, setup.space, values, name, setup.trials)
    _enqueue(study, enqueue, setup.raw, setup.space, setup.depth)
    if inside and isinstance(setup.space.sampler, GridSampler):
        setup = setup._replace(trials=setup.trials + 1)
    return setup, values, inside


@stoppable
def run_study(
    base: Path | None = None,
    *,
    trials: int,
    name: str | None = None,
    space: Path | None = None,
    storage: str | None = None,
    workers: int = 1,
    experiment: str = DEFAULT_EXPERIMENT,
    enqueue: Sequence[Path] = (),
    tracking_uri: str | None = None,
    overrides: Sequence[str] = (),
    heartbeat_interval: int = 60,
    keep_models: int | None = None,
    control: bool = True,
    finalists: int | None = None,
    finalist_seeds: int = 1,
    gpus: str | None = None,
) -> StudySummary:
    """Search `space` (default `studies/default.json`) around `base` (default: the quickstart)
    until the study has `trials` complete or pruned trials, resuming a study of that name.

    `storage`: None for `studies/<name>.journal`, a journal file path, or a database URL
    (PostgreSQL for workers on several machines, with `heartbeat_interval` seconds between
    heartbeats). `workers` processes run trials in parallel. The control (the base's own values,
    capexp.study.control) runs first unless `control` is False, then `enqueue` specs.
    Ctrl-C, SIGTERM or SIGHUP stop every worker: their running trials end KILLED and are queued
    to run again, and the parent run ends KILLED. `keep_models`: only the best k trials keep their
    logged models (capexp.study.keep_models). `finalists`: retrain the best k trials and the control at
    full budget, `finalist_seeds` seeds each, after the search (capexp.study.finalists; one objective
    only). `gpus` ("0,2"; default every visible GPU): worker i sees the (i mod G)-th (capexp.study.gpus).
    """
    base = Path(base) if base is not None else default_base()
    name = name or base.stem
    _check_counts(name, trials, workers, keep_models)
    devices = choose_gpus(gpus)
    setup = _setup(base, space, overrides, trials)
    check_finalists(finalists, finalist_seeds, setup.objectives, setup.origin)
    study = _open_study(name, storage, heartbeat_interval, setup.objectives, setup.spec, base, setup.origin)
    setup, values, inside = _queue(study, setup, name, enqueue, control)
    plan = dataclasses.replace(  # spawn even one worker to pin its GPU
        _plan(study, setup, name, storage, base, experiment, tracking_uri, heartbeat_interval, workers, keep_models),
        gpus=devices, spawn=gpus is not None and bool(devices))
    status, lines = "FAILED", []
    try:
        if values is not None and not inside:
            with console_warnings_only(plan):
                run_outside_control(plan, values)
        status = _run_trials(study, plan, workers)
        lines = _finalists(study, plan, status, finalists, finalist_seeds, setup.full, values)
    except KeyboardInterrupt:
        status = "KILLED"
        warn(f"study {name} interrupted; run the same command again to resume it.")
        raise
    finally:
        shutil.rmtree(Path(plan.snapshot).parent, ignore_errors=True)
        summary = summarize(study, plan, status)
    summary.finalists = lines
    return summary


def _plan(study, setup: _Setup, name: str, storage: str | None, base: Path, experiment: str, tracking_uri: str | None,
          heartbeat_interval: int, workers: int, keep_models: int | None) -> StudyPlan:
    """The study's parent run (created or found again) and everything its workers need."""
    uri = use_store(tracking_uri)
    label = storage_label(storage, name)
    parent = parent_run(uri, experiment_id(experiment), name, setup.raw, setup.space,
                        dict(base=str(base), space=setup.origin, storage=label, metric=setup.metric,
                             direction=setup.direction), setup.objectives)
    counts = trial_counts(study)
    done = counts["COMPLETE"] + counts["PRUNED"]
    log.info("study %s: %d of %d trials done; %s with %d worker(s); storage %s; MLflow parent run %s", name, done,
             setup.trials, "running the rest" if done < setup.trials else "nothing to run", workers, label, parent)
    return StudyPlan(
        name=name, storage=storage, base=str(base), snapshot=str(_snapshot(setup.spec, base)), space=setup.space,
        metric=setup.metric, direction=setup.direction, num_epochs=setup.spec.training_config.total_epochs,
        trials=setup.trials, experiment=experiment, tracking_uri=uri, parent_run_id=parent,
        heartbeat_interval=heartbeat_interval, seed_offset=sum(counts.values()), workers=workers,
        threads=max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0,
        log_level=logging.getLogger("capexp").getEffectiveLevel(), keep_models=keep_models,
        objectives=setup.objectives,
    )


def _finalists(study, plan: StudyPlan, status: str, count: int | None, seeds: int, full: Spec,
               control: dict[str, Any] | None) -> list[str]:
    """Retrain the finalists at full budget once the search is done; what they showed, as console lines."""
    if count is None:
        return []
    if status != "FINISHED":
        log.info("study %s: the finalists run once the search is done; run the same command again then.", plan.name)
        return []
    path = Path(plan.snapshot).with_suffix(".full.json")  # the base without the space's `budget`
    path.write_text(full.model_dump_json(indent=2))
    with console_warnings_only(plan):
        return run_finalists(study, plan, count, seeds, str(path), control)


def _snapshot(spec: Spec, base: Path) -> Path:
    """The base as resolved now, in a temporary file: trials run it even if its file is edited meanwhile."""
    snapshot = Path(tempfile.mkdtemp(prefix="capexp-study-")) / f"{base.stem}.json"
    snapshot.write_text(spec.model_dump_json(indent=2))
    return snapshot


def _check_counts(name: str, trials: int, workers: int, keep_models: int | None) -> None:
    check_keep_models(keep_models)
    if not _NAME.match(name):
        raise CapexpError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (it names the study file and runs).")
    if trials < 1 or workers < 1:
        raise CapexpError(f"--trials and --workers must be >= 1, got {trials} and {workers}.")


def _grid_trials(fitted: SearchSpace, trials: int, origin: str) -> int:
    """`trials`, or fewer when a grid has fewer points."""
    if isinstance(fitted.sampler, GridSampler):
        points = math.prod(len(p.choices) for p in fitted.params.values())  # type: ignore[union-attr]
        if trials > points:
            warn(f"{origin}: the grid has {points} points, so the study runs {points} trials, not {trials}.")
            return points
    return trials


def _open_study(name: str, storage: str | None, heartbeat_interval: int, objectives: Sequence[tuple[str, str]],
                spec: Spec, base: Path, space: str):
    """The study of that name, created or resumed; a resume must keep the objective (and is warned
    when the base spec changed)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # capexp prints its own line per trial
    metric, directions = ",".join(m for m, _ in objectives), [d for _, d in objectives]
    study = optuna.create_study(study_name=name, storage=open_storage(storage, name, heartbeat_interval),
                                directions=directions, load_if_exists=True)
    had = [d.name.lower() for d in study.directions]
    if had != directions or study.user_attrs.get(ATTR_METRIC, metric) != metric:
        direction = ",".join(directions)
        raise CapexpError(
            f"study {name} was created to {','.join(had)} "
            f"{study.user_attrs.get(ATTR_METRIC)!r}, but this run asks to {direction} {metric!r}. "
            f"Use a new --name for a new objective."
        )
    if study.user_attrs.get(ATTR_BASE_HASH, spec_hash(spec)) != spec_hash(spec):
        warn(f"study {name}: the base spec ({base}) changed since the study began; old and new trials are not comparable.")
    for key, value in ((ATTR_METRIC, metric), (ATTR_BASE_HASH, spec_hash(spec)), (ATTR_BASE, str(base)), (ATTR_SPACE, space)):
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    names = [m for m, _ in objectives]
    if len(names) > 1 and study.metric_names != names:  # Optuna's plots and dashboard label each objective by it
        with quiet_experimental():
            study.set_metric_names(names)
    return study


def _run_trials(study, plan: StudyPlan, workers: int) -> str:
    """Run the workers (here, or spawned); the parent run's status when they stop: FINISHED, or
    RUNNING while other machines still run the last trials."""
    name, trials = plan.name, plan.trials
    problems: list[str] = []
    if workers > 1 or plan.spawn:
        problems = run_workers(plan, workers)
        _reap_dead_workers(plan)
    else:
        work(plan, 0)
    counts = trial_counts(study)
    done = counts["COMPLETE"] + counts["PRUNED"]
    if isinstance(plan.space.sampler, GridSampler) and grid_points_run(study) >= trials:
        trials = done  # every grid point ran; failed ones stay failed (their error is in trials.csv)
    if done + counts["RUNNING"] < trials:
        raise CapexpError(
            f"study {name} stopped with {done} of {trials} trials done: " + "; ".join(problems or ["no worker is left"])
            + ". Fix the cause and run the same command again to resume."
        )
    if problems:
        warn(f"study {name}: " + "; ".join(problems) + ".")
    if done < trials:  # the last trials run in other processes (other machines): they finish the study
        log.info("study %s: %d trial(s) still running elsewhere; the study ends when they do.", name, counts["RUNNING"])
    return "FINISHED" if done >= trials else "RUNNING"


def _reap_dead_workers(plan: StudyPlan) -> None:
    """Fail and queue again the trials of workers that died (not "running elsewhere": nobody runs them)."""
    import optuna

    storage = open_storage(plan.storage, plan.name, plan.heartbeat_interval, on_stale(plan))
    reap(optuna.load_study(study_name=plan.name, storage=storage), storage, plan)
