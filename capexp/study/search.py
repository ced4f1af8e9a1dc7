"""`capexp study`: set up (or resume) a study around a base spec, run its workers, summarise it."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from capexp.spec.checks import check_decoder_fit, check_spec
from capexp.data import check_inputs
from capexp.errors import CapexpError, warn
from capexp.paths import project_file
from capexp.study.gpus import choose_gpus
from capexp.study.pareto import RUN_TOTALS, Objective, objective_list
from capexp.study.space import Categorical, GridSampler, SearchSpace, load_space
from capexp.spec.schema import Spec, flatten, load_spec, metric_mode, spec_hash
from capexp.stopping import stoppable
from capexp.study.keep_models import check_keep_models
from capexp.study.liveness import on_stale, reap
from capexp.study.plan import Plan, StudySummary
from capexp.study.report import parent_run, summarize
from capexp.study.storage import grid_points_run, open_storage, storage_label, trial_counts
from capexp.study.trials import run_workers, work
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
        for value in values:
            try:
                check_decoder_fit(load_spec(base, [*overrides, f"{key}={json.dumps(value)}"]), str(base))
            except CapexpError as e:
                raise CapexpError(f"{origin}: `params.{key}` value {json.dumps(value)} does not fit the base spec: {e}") from None


def _enqueue(study, paths: Sequence[Path], raw: SearchSpace, space: SearchSpace, depth: int) -> None:
    """Queue the search-space values of known specs (for example the seed's six) as the first trials."""
    for path in paths:
        spec = load_spec(path)
        flat = flatten(spec)
        params = {}
        for key, param in space.params.items():
            value = raw.fit_value(key, flat.get(key), depth)
            try:
                params[key] = param.encode(value)
            except ValueError as e:
                raise CapexpError(
                    f"--enqueue {path}: `{key}` is {json.dumps(flat.get(key))}, which the search space cannot "
                    f"take ({e}). Add the value to the space's `params.{key}` or leave this spec out."
                ) from None
        study.enqueue_trial(params, user_attrs={ATTR_RUN_NAME: spec.id}, skip_if_exists=True)


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
    gpus: str | None = None,
) -> StudySummary:
    """Search `space` (default `studies/default.json`) around `base` (default: the quickstart)
    until the study has `trials` complete or pruned trials, resuming a study of that name.

    `storage`: None for `studies/<name>.journal`, a journal file path, or a database URL
    (PostgreSQL for workers on several machines, with `heartbeat_interval` seconds between
    heartbeats). `workers` processes run trials in parallel. `enqueue` specs run first.
    Ctrl-C, SIGTERM or SIGHUP stop every worker: their running trials end KILLED and are queued
    to run again, and the parent run ends KILLED. `keep_models`: only the best k trials keep their
    logged models (capexp.study.keep_models). `gpus` (e.g. "0,2", default every visible GPU): worker i
    sees only the (i mod G)-th of them (capexp.study.gpus).
    """
    from capexp.backbones import decoder_depth

    base = Path(base) if base is not None else default_base()
    name = name or base.stem
    _check_counts(name, trials, workers)
    check_keep_models(keep_models)
    devices = choose_gpus(gpus)
    origin = str(space) if space is not None else "studies/default.json"
    raw = load_space(space)
    overrides = [*overrides, *raw.budget_overrides()]  # every trial runs on the space's budget
    spec = load_spec(base, overrides)
    check_spec(spec, str(base))
    check_inputs(spec, str(base))  # missing data fails here, not inside trial 0
    depth = decoder_depth(spec.gpt2_config.model, spec.gpt2_config.tokenizer)
    fitted = raw.fit_to_depth(depth, origin)
    _check_values(fitted, base, overrides, origin)
    objectives = tuple(_auto_objective(o, spec) for o in objective_list(fitted.objective))
    metric, direction = objectives[0]
    trials = _grid_trials(fitted, trials, origin)
    study = _open_study(name, storage, heartbeat_interval, objectives, spec, base, origin)
    _enqueue(study, enqueue, raw, fitted, depth)

    uri = use_store(tracking_uri)
    label = storage_label(storage, name)
    parent = parent_run(uri, experiment_id(experiment), name, raw, fitted,
                        dict(base=str(base), space=origin, storage=label, metric=metric, direction=direction), objectives)
    snapshot = _snapshot(spec, base)
    counts = trial_counts(study)
    plan = Plan(
        name=name, storage=storage, base=str(base), snapshot=str(snapshot), space=fitted, metric=metric,
        direction=direction, num_epochs=spec.training_config.total_epochs, trials=trials, experiment=experiment,
        tracking_uri=uri, parent_run_id=parent, heartbeat_interval=heartbeat_interval,
        seed_offset=sum(counts.values()), workers=workers, threads=max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0,
        log_level=logging.getLogger("capexp").getEffectiveLevel(), keep_models=keep_models,
        objectives=objectives, gpus=devices, spawn=gpus is not None and bool(devices),
    )
    done = counts["COMPLETE"] + counts["PRUNED"]
    log.info("study %s: %d of %d trials done; %s with %d worker(s); storage %s; MLflow parent run %s",
             name, done, trials, "running the rest" if done < trials else "nothing to run", workers, label, parent)
    status = "FAILED"
    try:
        status = _run_trials(study, plan, workers)
    except KeyboardInterrupt:
        status = "KILLED"
        warn(f"study {name} interrupted; run the same command again to resume it.")
        raise
    finally:
        shutil.rmtree(snapshot.parent, ignore_errors=True)
        summary = summarize(study, plan, status)
    return summary


def _snapshot(spec: Spec, base: Path) -> Path:
    """The base as resolved now, in a temporary file: trials run it even if its file is edited meanwhile."""
    snapshot = Path(tempfile.mkdtemp(prefix="capexp-study-")) / f"{base.stem}.json"
    snapshot.write_text(spec.model_dump_json(indent=2))
    return snapshot


def _check_counts(name: str, trials: int, workers: int) -> None:
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
    return study


def _run_trials(study, plan: Plan, workers: int) -> str:
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


def _reap_dead_workers(plan: Plan) -> None:
    """Fail and queue again the trials of workers that died (not "running elsewhere": nobody runs them)."""
    import optuna

    storage = open_storage(plan.storage, plan.name, plan.heartbeat_interval, on_stale(plan))
    reap(optuna.load_study(study_name=plan.name, storage=storage), storage, plan)
