"""Running trials: the sampler and pruner, the objective (one `run_spec` per trial), and the worker processes."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from capexp.errors import CapexpError, TrainingDiverged, warn
from capexp.study.space import GridSampler, HyperbandPruner, MedianPruner
from capexp.spec.loading import flatten, load_spec
from capexp.stopping import exit_code, stop_on_signals
from capexp.study.front import run_values, several
from capexp.study.pareto import objective_value
from capexp.study.gpus import worker_env
from capexp.study.liveness import on_stale, reap, retry, worker_id
from capexp.study.params import active_values
from capexp.study.keep_models import keep_best_models
from capexp.study.plan import StudyPlan
from capexp.study.progress import trial_line
from capexp.study.storage import frozen, open_storage, quiet_experimental, trial_counts
from capexp.tracking.names import ATTR_CONTROL, TAG_CONTROL
from capexp.tracking.store import environment
from capexp.tracking.study_runs import study_runs
from capexp.tracking import (
    ATTR_ERROR, ATTR_RUN_ID, ATTR_RUN_NAME, ATTR_WORKER, PARAM_TRIAL_NUMBER, TAG_OPTUNA_STATE, TAG_STUDY, TAG_TRIAL,
)


log = logging.getLogger("capexp")

_MAX_FAILED_IN_A_ROW = 3  # a worker whose trials keep failing stops: the base itself is likely at fault


def _sampler(plan: StudyPlan, index: int):
    import optuna

    cfg = plan.space.sampler
    # Workers and resumes must not repeat each other, nor another study's: worker 1 of seed 0 is not worker 0 of seed 1.
    seed = cfg.seed + 7919 * plan.seed_offset + 1_000_003 * index
    if isinstance(cfg, GridSampler):
        grid = {key: p.encoded() for key, p in plan.space.params.items()}  # type: ignore[union-attr]
        return optuna.samplers.GridSampler(grid, seed=seed)
    with quiet_experimental():
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials, constant_liar=True)


def _pruner(plan: StudyPlan):
    import optuna

    cfg = plan.space.pruner if not several(plan) else None  # Optuna prunes single-objective studies only
    if isinstance(cfg, MedianPruner):
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    if isinstance(cfg, HyperbandPruner):
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg.min_resource, max_resource=plan.num_epochs, reduction_factor=cfg.reduction_factor
        )
    return optuna.pruners.NopPruner()


def _reporter(plan: StudyPlan, trial, scores: list[float]):
    """The per-epoch callback of a trial's run: record the objective, report it, ask the pruner
    (with several objectives, nothing: the trial is scored from its run's metrics once it ends)."""

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        if several(plan):
            return False
        if plan.metric not in metrics:
            raise CapexpError(
                f"study {plan.name}: the objective metric is {plan.metric!r}, but trial {trial.number} "
                f"logs only {', '.join(sorted(metrics))}. Set `objective.metric` in the search-space file "
                f"to one of these and use a new --name."
            )
        scores.append(metrics[plan.metric])
        trial.report(metrics[plan.metric], epoch)
        return trial.should_prune()

    return on_epoch


def _objective(plan: StudyPlan, storage, worker: str):
    """The trial function: sample, run the spec with the sampled values, report every epoch.

    Values that make training diverge or run out of memory fail just that trial (it returns NaN,
    which Optuna records as FAIL) and the study goes on; any other error ends the worker.
    """
    import optuna
    import torch

    from capexp.training.run import run_spec

    base = flatten(load_spec(plan.snapshot), sections=True)  # what a conditional param's `when` reads for keys not searched

    def objective(trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            return run_trial(trial)
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: this trial runs again on the next command
            retry(trial.study, frozen(storage, plan.name, trial.number))
            raise

    def run_trial(trial: optuna.Trial) -> float | tuple[float, ...]:
        trial.set_user_attr(ATTR_WORKER, worker)
        values = active_values(plan.space.params, base, lambda key, param: param.suggest(trial, key))
        run_name = trial.user_attrs.get(ATTR_RUN_NAME) or f"{plan.name}-{trial.number:03d}"
        sets = [f"{key}={json.dumps(value)}" for key, value in values.items()]
        spec = load_spec(plan.snapshot, [*sets, f"id={json.dumps(run_name)}"])
        log.debug("study %s: trial %d starts: %s", plan.name, trial.number, ", ".join(sets))
        scores: list[float] = []
        tags = {TAG_STUDY: plan.name, TAG_TRIAL: str(trial.number),
                **({TAG_CONTROL: "true"} if trial.user_attrs.get(ATTR_CONTROL) else {})}
        try:
            result = run_spec(
                spec, origin=f"{plan.base} (study {plan.name}, trial {trial.number})", experiment=plan.experiment,
                tracking_uri=plan.tracking_uri, parent_run_id=plan.parent_run_id, tags=tags,
                params={PARAM_TRIAL_NUMBER: str(trial.number)}, on_epoch=_reporter(plan, trial, scores),
            )
        except (TrainingDiverged, torch.cuda.OutOfMemoryError) as e:
            reason = str(e) if isinstance(e, TrainingDiverged) else f"out of memory: {e}"
            trial.set_user_attr(ATTR_ERROR, reason[:500])
            _tag_state(plan, trial.number, "FAIL")
            warn(f"study {plan.name}: trial {trial.number} failed ({', '.join(sets)}): {reason}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return math.nan  # FAIL; the study samples other values
        except Exception:
            _tag_state(plan, trial.number, "FAIL")
            raise
        trial.set_user_attr(ATTR_RUN_ID, result.run_id)
        _tag_state(plan, trial.number, "PRUNED" if result.pruned else "COMPLETE", result.run_id)
        if result.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {len(scores)}")
        if several(plan):
            return run_values(plan, result.run_id, trial.number)
        return objective_value(plan.metric, plan.direction, scores)  # type: ignore[return-value] - an epoch ran

    return objective


def _tag_state(plan: StudyPlan, number: int, state: str, run_id: str | None = None) -> None:
    """Tag trial `number`'s MLflow run (found by its study and trial tags when `run_id` is None) with its Optuna state."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    if run_id is None:
        runs = study_runs(client, plan.experiment, plan.name, tags={TAG_TRIAL: str(number)})
        run_id = runs[-1].info.run_id if runs else None
    if run_id is not None:
        client.set_tag(run_id, TAG_OPTUNA_STATE, state)


@contextlib.contextmanager
def console_warnings_only(plan: StudyPlan) -> Iterator[None]:
    """Trial runs log to their run.log as usual, but the console shows only warnings and the progress
    lines (everything with -v)."""
    import mlflow  # noqa: F401 - importing it adds MLflow's own console handler, quieted here too
    from rich.logging import RichHandler

    loggers = (logging.getLogger(), logging.getLogger("mlflow"))
    handlers = [h for lg in loggers for h in lg.handlers if isinstance(h, RichHandler) or type(h) is logging.StreamHandler]
    levels = [h.level for h in handlers]
    if plan.log_level > logging.DEBUG:
        for handler in handlers:
            handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels):
            handler.setLevel(level)


def work(plan: StudyPlan, index: int) -> None:
    """One worker: run trials until the study has `plan.trials` complete or pruned ones."""
    with console_warnings_only(plan):
        _work(plan, index)


def _work(plan: StudyPlan, index: int) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a spawned worker too: capexp prints its own line per trial
    storage = open_storage(plan.storage, plan.name, plan.heartbeat_interval, on_stale(plan))
    study = optuna.load_study(study_name=plan.name, storage=storage, sampler=_sampler(plan, index), pruner=_pruner(plan))

    def enough(counts: dict[str, int]) -> bool:
        # Others' running trials count, so workers stop at N; two that finish a trial at the
        # same moment may both start one more (at most workers - 1 trials past N).
        return counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] >= plan.trials

    failed: list[Any] = []  # this worker's trials that failed since its last good one

    def after_trial(study: optuna.Study, trial: Any) -> None:
        print(trial_line(study, trial, plan), file=sys.stderr, flush=True)
        reap(study, storage, plan)
        keep_best_models(study, plan)
        failed[:] = [*failed, trial] if trial.state == optuna.trial.TrialState.FAIL else []
        if len(failed) >= _MAX_FAILED_IN_A_ROW:
            numbers = ", ".join(str(t.number) for t in failed)
            raise CapexpError(
                f"study {plan.name}: trials {numbers} failed one after another (last: "
                f"{failed[-1].user_attrs.get(ATTR_ERROR, 'see its run')}). The base spec {plan.base} or the "
                f"search space is likely at fault; fix it and run the same command again to resume."
            )
        if enough(trial_counts(study)):
            study.stop()

    reap(study, storage, plan)
    keep_best_models(study, plan)  # a resume may ask for fewer models than before
    if enough(trial_counts(study)):
        return
    study.optimize(_objective(plan, storage, worker_id()), callbacks=[after_trial], gc_after_trial=True)


def _worker_main(plan: StudyPlan, index: int, errors: Any, bar_lock: Any, task: Callable[[StudyPlan, int], None]) -> None:
    """Entry point of a spawned worker process: `task(plan, index)`; its error goes back to the parent as one line.

    Training bars share `bar_lock`, made by the parent: a lock tqdm made here would be left to the
    parent's resource tracker when this process is killed, which then warns of a leaked semaphore."""
    from tqdm import tqdm

    tqdm.set_lock(bar_lock)
    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    logging.basicConfig(level=logging.WARNING, format=f"[worker {index}] %(levelname)s %(message)s")
    logging.getLogger("capexp").setLevel(plan.log_level)
    for noisy in ("mlflow", "alembic", "optuna", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with stop_on_signals():
            task(plan, index)
    except CapexpError as e:
        errors.put((index, str(e)))
        raise SystemExit(2) from None
    except KeyboardInterrupt as e:
        raise SystemExit(exit_code(e)) from None
    except Exception as e:  # noqa: BLE001 - the parent turns it into one message
        log.exception("worker %d failed", index)
        errors.put((index, f"{type(e).__name__}: {e}"))
        raise SystemExit(1) from None


def run_workers(plan: StudyPlan, workers: int, task: Callable[[StudyPlan, int], None] = work) -> list[str]:
    """Run `task(plan, i)` in `workers` processes (spawned: they share only the storage and the MLflow
    store; `task` must pickle); return what went wrong in each that failed."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    errors, bar_lock = ctx.SimpleQueue(), ctx.RLock()
    procs = [ctx.Process(target=_worker_main, args=(plan, i, errors, bar_lock, task), name=f"capexp-study-{i}")
             for i in range(workers)]
    # Workers' training bars would overwrite one another on the console: with several, the
    # progress lines say enough. A spawned process reads its environment as it starts.
    with environment({"TQDM_DISABLE": "1"} if workers > 1 else {}):
        for i, proc in enumerate(procs):
            with environment(worker_env(i, plan.gpus)):
                proc.start()
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:  # Ctrl-C reached the workers too; SIGTERM or SIGHUP only this process
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)  # a worker stops once: a second signal is ignored
        for proc in procs:
            proc.join()
        raise
    reported = {}
    while not errors.empty():
        index, message = errors.get()
        reported[index] = message
    return [f"worker {i}: {reported.get(i, f'exited with code {p.exitcode}')}" for i, p in enumerate(procs) if p.exitcode]
