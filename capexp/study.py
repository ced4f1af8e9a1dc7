"""Optuna studies over capexp specs: the seed's hand-tuning as a search one can stop, resume and spread.

Each trial is an ordinary `run_spec` of the base spec with the sampled values set by their dotted
keys; it reports every epoch to the pruner and is a child of the study's MLflow parent run.
Studies live in Optuna storage (a journal file under `studies/` by default, PostgreSQL for several
machines), so running the same command again resumes: it retries trials whose worker died and
runs only the trials still missing. When it ends, the parent run holds the best trial, a table
of all trials and the Optuna plots.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import socket
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capexp.checks import check_decoder_fit, check_spec
from capexp.errors import CapexpError, TrainingDiverged, warn
from capexp.search_space import Categorical, GridSampler, HyperbandPruner, MedianPruner, SearchSpace, load_space
from capexp.spec import Spec, flatten, load_spec, spec_hash
from capexp.tracking import DEFAULT_EXPERIMENT, TAG_STUDY, experiment_id, param_value, use_store

__all__ = ["TAG_TRIAL", "TAG_STUDY_ROLE", "StudySummary", "run_study", "open_storage", "default_base"]

log = logging.getLogger("capexp")

TAG_TRIAL = "capexp.trial"  # trial number, on each trial run
TAG_STUDY_ROLE = "capexp.study_role"  # "parent" on a study's parent run
_ATTR_WORKER = "capexp.worker"  # host:pid:start-time of the process running a trial
_ATTR_RUN_ID = "mlflow_run_id"
_ATTR_RUN_NAME = "capexp.run_name"  # an enqueued spec's id: its trial's run name
_ATTR_METRIC = "capexp.objective_metric"
_ATTR_BASE_HASH = "capexp.base_hash"
_ATTR_ERROR = "capexp.error"  # why a trial failed (diverged, out of memory)
_MAX_RETRY = 3  # a trial whose worker died or was interrupted is retried this often
_MAX_FAILED_IN_A_ROW = 3  # a worker whose trials keep failing stops: the base itself is likely at fault
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class StudySummary:
    """Where a study stands after `run_study`."""

    name: str
    storage: str  # where the trials live (password masked)
    parent_run_id: str
    metric: str
    direction: str
    trials: int  # asked for (complete + pruned)
    complete: int
    pruned: int
    failed: int
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_run_id: str | None = None

    def report(self) -> str:
        """A few lines for the console."""
        lines = [
            f"study {self.name}: {self.complete} complete, {self.pruned} pruned, {self.failed} failed "
            f"(asked for {self.trials}); storage {self.storage}; MLflow parent run {self.parent_run_id}"
        ]
        if self.best_trial is not None and self.best_value is not None:
            values = ", ".join(f"{k}={json.dumps(v)}" for k, v in self.best_params.items())
            lines.append(f"best: trial {self.best_trial} (run {self.best_run_id}), {self.metric}={self.best_value:.4f}; {values}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs; picklable, since it crosses a process spawn."""

    name: str
    storage: str | None
    base: str  # the base spec file, as the user named it (for messages)
    snapshot: str  # the base as resolved when the command started (extends and --set applied)
    space: SearchSpace  # fitted to the base decoder's depth
    metric: str
    direction: str
    num_epochs: int
    trials: int
    experiment: str
    tracking_uri: str
    parent_run_id: str
    heartbeat_interval: int
    seed_offset: int  # trials in the study when this command started: a resume samples anew
    threads: int  # torch threads per worker (0: leave torch's default)
    log_level: int


def default_base() -> Path:
    """The quickstart spec: the base when `--spec` is left out."""
    return Path(__file__).resolve().parents[1] / "experiments" / "quickstart.json"


# ---------------------------------------------------------------------------- storage
@contextlib.contextmanager
def _quiet_experimental() -> Iterator[None]:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _masked(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _journal_path(storage: str | None, name: str) -> Path | None:
    if storage is not None and "://" in storage:
        return None
    return Path(storage) if storage else Path("studies") / f"{name}.journal"


def open_storage(storage: str | None, name: str, heartbeat_interval: int = 60, on_stale: Callable[[Any, Any], None] | None = None):
    """Optuna storage: None -> `studies/<name>.journal`; a path -> a journal file there (any
    number of processes on one machine); a database URL -> RDBStorage with heartbeats, so a
    trial whose worker died is failed and handed to `on_stale(study, trial)` (default: queued
    again), for PostgreSQL and workers on several machines."""
    import sqlalchemy.exc
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    path = _journal_path(storage, name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    assert storage is not None
    if storage.startswith("sqlite"):
        warn(f"--storage {storage}: SQLite is not safe for several workers; prefer the default journal file or PostgreSQL.")
    try:
        with _quiet_experimental():
            return RDBStorage(
                storage, engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat_interval, grace_period=2 * heartbeat_interval,
                heartbeat_stale_trial_callback=on_stale or RetryHeartbeatStaleTrialCallback(max_retry=_MAX_RETRY),
            )
    except ImportError as e:  # Optuna wraps the driver's ModuleNotFoundError
        missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "?"
        raise CapexpError(
            f"--storage {_masked(storage)} needs the database driver `{missing}`, which is not installed. "
            f"For postgresql:// URLs run `pip install 'psycopg[binary]'`."
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CapexpError(
            f"--storage {_masked(storage)}: cannot open the study database ({first}). Check the URL "
            f"(postgresql://USER:PASSWORD@HOST:PORT/DB), that the server runs and that the database exists."
        ) from None


def _storage_label(storage: str | None, name: str) -> str:
    path = _journal_path(storage, name)
    return str(path.resolve()) if path is not None else _masked(storage or "")


# ---------------------------------------------------------------------------- workers and dead trials
def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is absent); 'Z' for a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return "Z" if fields[0] in ("Z", "X") else fields[19]


def _worker_id() -> str:
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


def _retry(study, trial) -> None:
    """Queue a copy of `trial` (same params) to run again, as Optuna does for heartbeat-stale trials."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with _quiet_experimental():
        RetryHeartbeatStaleTrialCallback(max_retry=_MAX_RETRY)(study, trial)


def _reap(study, storage, plan: _Plan) -> None:
    """Fail (and queue again) the running trials of dead workers, end their runs KILLED: those
    of this machine's dead processes, and those whose database heartbeat stopped."""
    import optuna
    from optuna.trial import TrialState

    with _quiet_experimental():
        optuna.storages.fail_stale_trials(study)  # calls _on_stale for each; a no-op for journal files
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(_ATTR_WORKER)
        if not worker or not _is_dead(worker):
            continue
        try:
            if not storage.set_trial_state_values(_trial_id(storage, plan.name, trial.number), state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        log.warning("study %s: trial %d's worker (%s) died; the trial is failed and queued to run again.",
                    plan.name, trial.number, worker)
        _on_stale(plan)(study, _frozen(storage, plan.name, trial.number))
    _end_orphan_runs(study, plan)


def _end_orphan_runs(study, plan: _Plan) -> None:
    """End KILLED the RUNNING runs of FAIL trials: a process killed while it reaped a dead worker's trial
    (after failing it, before ending its run) leaves such a run behind."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    failed = {str(t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name(plan.experiment) if failed else None
    if exp is None:
        return
    query = (f"tags.`{TAG_STUDY}` = '{plan.name}' and tags.`mlflow.parentRunId` = '{plan.parent_run_id}' "
             f"and attributes.status = 'RUNNING'")
    for run in client.search_runs([exp.experiment_id], filter_string=query):
        if run.data.tags.get(TAG_TRIAL) in failed:
            client.set_terminated(run.info.run_id, "KILLED")


def _on_stale(plan: _Plan) -> Callable[[Any, Any], None]:
    """What happens to a trial whose worker died: queued again, its MLflow run ended KILLED."""

    def handle(study, trial) -> None:
        _retry(study, trial)
        _end_dead_runs(plan, trial.number)

    return handle


def _end_dead_runs(plan: _Plan, number: int) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    exp = client.get_experiment_by_name(plan.experiment)
    if exp is None:
        return
    query = (f"tags.`{TAG_STUDY}` = '{plan.name}' and tags.`{TAG_TRIAL}` = '{number}' "
             f"and tags.`mlflow.parentRunId` = '{plan.parent_run_id}' and attributes.status = 'RUNNING'")
    for run in client.search_runs([exp.experiment_id], filter_string=query):
        client.set_terminated(run.info.run_id, "KILLED")


def _counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {s.name: states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                             TrialState.RUNNING, TrialState.WAITING)}


def _grid_points_run(study) -> int:
    """How many grid points have a finished trial (complete, pruned or failed)."""
    return len({t.system_attrs["grid_id"] for t in study.get_trials(deepcopy=False)
                if t.state.is_finished() and "grid_id" in t.system_attrs})


def _sampler(plan: _Plan, index: int):
    import optuna

    cfg = plan.space.sampler
    seed = cfg.seed + 7919 * plan.seed_offset + index  # workers and resumes must not repeat each other
    if isinstance(cfg, GridSampler):
        grid = {key: p.encoded() for key, p in plan.space.params.items()}  # type: ignore[union-attr]
        return optuna.samplers.GridSampler(grid, seed=seed)
    with _quiet_experimental():
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials, constant_liar=True)


def _pruner(plan: _Plan):
    import optuna

    cfg = plan.space.pruner
    if isinstance(cfg, MedianPruner):
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials, n_warmup_steps=cfg.n_warmup_steps)
    if isinstance(cfg, HyperbandPruner):
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg.min_resource, max_resource=plan.num_epochs, reduction_factor=cfg.reduction_factor
        )
    return optuna.pruners.NopPruner()


def _trial_id(storage, name: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), number)


def _frozen(storage, name: str, number: int):
    """Trial `number` of study `name` as stored now."""
    return storage.get_trial(_trial_id(storage, name, number))


def _objective(plan: _Plan, storage, worker: str):
    """The trial function: sample, run the spec with the sampled values, report every epoch.

    Values that make training diverge or run out of memory fail just that trial (it returns NaN,
    which Optuna records as FAIL) and the study goes on; any other error ends the worker.
    """
    import optuna
    import torch

    from capexp.run import run_spec

    better = max if plan.direction == "maximize" else min

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(_ATTR_WORKER, worker)
        values = {key: param.suggest(trial, key) for key, param in plan.space.params.items()}
        run_name = trial.user_attrs.get(_ATTR_RUN_NAME) or f"{plan.name}-{trial.number:03d}"
        sets = [f"{key}={json.dumps(value)}" for key, value in values.items()]
        spec = load_spec(plan.snapshot, [*sets, f"id={json.dumps(run_name)}"])
        log.info("study %s: trial %d starts: %s", plan.name, trial.number, ", ".join(sets))
        scores: list[float] = []

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            if plan.metric not in metrics:
                raise CapexpError(
                    f"study {plan.name}: the objective metric is {plan.metric!r}, but trial {trial.number} "
                    f"logs only {', '.join(sorted(metrics))}. Set `objective.metric` in the search-space file "
                    f"to one of these and use a new --name."
                )
            scores.append(metrics[plan.metric])
            trial.report(metrics[plan.metric], epoch)
            return trial.should_prune()

        tags = {TAG_STUDY: plan.name, TAG_TRIAL: str(trial.number)}
        try:
            result = run_spec(
                spec, origin=f"{plan.base} (study {plan.name}, trial {trial.number})", experiment=plan.experiment,
                tracking_uri=plan.tracking_uri, parent_run_id=plan.parent_run_id, tags=tags, on_epoch=on_epoch,
            )
        except KeyboardInterrupt:
            _retry(trial.study, _frozen(storage, plan.name, trial.number))
            raise
        except (TrainingDiverged, torch.cuda.OutOfMemoryError) as e:
            reason = str(e) if isinstance(e, TrainingDiverged) else f"out of memory: {e}"
            trial.set_user_attr(_ATTR_ERROR, reason[:500])
            warn(f"study {plan.name}: trial {trial.number} failed ({', '.join(sets)}): {reason}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return math.nan  # FAIL; the study samples other values
        trial.set_user_attr(_ATTR_RUN_ID, result.run_id)
        if result.pruned:
            log.info("study %s: trial %d pruned after epoch %d (%s %.4f)", plan.name, trial.number,
                     len(scores), plan.metric, scores[-1])
            raise optuna.TrialPruned(f"pruned after epoch {len(scores)}")
        log.info("study %s: trial %d complete: %s %.4f", plan.name, trial.number, plan.metric, better(scores))
        return better(scores)

    return objective


def _work(plan: _Plan, index: int) -> None:
    """One worker: run trials until the study has `plan.trials` complete or pruned ones."""
    import optuna

    if plan.threads:
        import torch

        torch.set_num_threads(plan.threads)
    storage = open_storage(plan.storage, plan.name, plan.heartbeat_interval, _on_stale(plan))
    study = optuna.load_study(study_name=plan.name, storage=storage, sampler=_sampler(plan, index), pruner=_pruner(plan))

    def enough(counts: dict[str, int]) -> bool:
        # Others' running trials count, so workers stop at N; two that finish a trial at the
        # same moment may both start one more (at most workers - 1 trials past N).
        return counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] >= plan.trials

    failed: list[Any] = []  # this worker's trials that failed since its last good one

    def after_trial(study: optuna.Study, trial: Any) -> None:
        _reap(study, storage, plan)
        failed[:] = [*failed, trial] if trial.state == optuna.trial.TrialState.FAIL else []
        if len(failed) >= _MAX_FAILED_IN_A_ROW:
            numbers = ", ".join(str(t.number) for t in failed)
            raise CapexpError(
                f"study {plan.name}: trials {numbers} failed one after another (last: "
                f"{failed[-1].user_attrs.get(_ATTR_ERROR, 'see its run')}). The base spec {plan.base} or the "
                f"search space is likely at fault; fix it and run the same command again to resume."
            )
        if enough(_counts(study)):
            study.stop()

    _reap(study, storage, plan)
    if enough(_counts(study)):
        return
    study.optimize(_objective(plan, storage, _worker_id()), callbacks=[after_trial], gc_after_trial=True)


def _worker_main(plan: _Plan, index: int, errors: Any) -> None:
    """Entry point of a spawned worker process; its error goes back to the parent as one line."""
    logging.basicConfig(level=logging.WARNING, format=f"[worker {index}] %(levelname)s %(message)s")
    logging.getLogger("capexp").setLevel(plan.log_level)
    for noisy in ("mlflow", "alembic", "optuna", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        _work(plan, index)
    except CapexpError as e:
        errors.put((index, str(e)))
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001 - the parent turns it into one message
        log.exception("worker %d failed", index)
        errors.put((index, f"{type(e).__name__}: {e}"))
        raise SystemExit(1) from None


def _run_workers(plan: _Plan, workers: int) -> list[str]:
    """Run `workers` processes (spawned: they share only the storage and the MLflow store);
    return what went wrong in each that failed."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker_main, args=(plan, i, errors), name=f"capexp-study-{i}") for i in range(workers)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        for proc in procs:
            proc.join()
        raise
    reported = {}
    while not errors.empty():
        index, message = errors.get()
        reported[index] = message
    return [f"worker {i}: {reported.get(i, f'exited with code {p.exitcode}')}" for i, p in enumerate(procs) if p.exitcode]


# ---------------------------------------------------------------------------- setup
def _decoder_depth(spec: Spec) -> int:
    from capexp.backbones import decoder_blocks, load_decoder

    decoder, _ = load_decoder(spec.gpt2_config.model, spec.gpt2_config.tokenizer)
    return len(decoder_blocks(decoder))


def _auto_objective(space: SearchSpace, spec: Spec) -> tuple[str, str]:
    metric = space.objective.metric
    if metric == "auto":
        metric = "cider" if spec.evaluation.coco_metrics and shutil.which("java") else "bertscore_f1"
    direction = space.objective.direction
    if direction == "auto":
        direction = "minimize" if "loss" in metric else "maximize"
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
        study.enqueue_trial(params, user_attrs={_ATTR_RUN_NAME: spec.id}, skip_if_exists=True)


def _parent_run(uri: str, plan_name: str, exp_id: str, tags: dict[str, str], params: dict[str, str]) -> str:
    """The study's parent run, found by its tags (a resume reuses it) or created."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(uri)
    query = f"tags.`{TAG_STUDY}` = '{plan_name}' and tags.`{TAG_STUDY_ROLE}` = 'parent'"

    def oldest() -> str | None:
        found = client.search_runs([exp_id], filter_string=query, max_results=1,
                                   order_by=["attributes.start_time ASC", "attributes.run_id ASC"])
        return found[0].info.run_id if found else None

    existing = oldest()
    if existing is not None:
        client.update_run(existing, status="RUNNING")
        return existing
    run_id = client.create_run(exp_id, run_name=plan_name, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    # Machines that start a new study at the same moment each made one: all keep the oldest.
    keep = oldest()
    assert keep is not None
    if keep != run_id:
        client.delete_run(run_id)
    return keep


# ---------------------------------------------------------------------------- the end: what the parent holds
def _decoded(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    return {k: space.params[k].decode(v) for k, v in params.items() if k in space.params}


def _trials_table(study, space: SearchSpace) -> Any:
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        values = _decoded(space, t.params)
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "epochs": len(t.intermediate_values),
            **{k: json.dumps(values[k]) if isinstance(values.get(k), (list, dict)) else values.get(k) for k in space.params},
            "run_id": t.user_attrs.get(_ATTR_RUN_ID, ""),
            "run_name": t.user_attrs.get(_ATTR_RUN_NAME, ""),
            "retry_of": t.system_attrs.get("failed_trial", ""),
            "error": t.user_attrs.get(_ATTR_ERROR, ""),
            "seconds": t.duration.total_seconds() if t.duration else None,
        })
    return pd.DataFrame(rows)


def _plots(study, folder: Path) -> list[Path]:
    """The four Optuna plots as PNGs (one with too few trials to show anything is drawn empty)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    made = []
    for name, plot in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances),
                       ("parallel_coordinate", ovm.plot_parallel_coordinate),
                       ("intermediate_values", ovm.plot_intermediate_values)):
        with _quiet_experimental(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "identical low and high ylims" and the like
            fig = plot(study).figure
        fig.set_size_inches(9, 5)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    return made


def _summarize(study, plan: _Plan, status: str) -> StudySummary:
    """Write the best trial, the trials table and the plots to the parent run; end it with
    `status` unless that is RUNNING (other workers still run trials)."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag
    from optuna.trial import TrialState

    client = MlflowClient(plan.tracking_uri)
    counts = _counts(study)
    summary = StudySummary(
        name=plan.name, storage=_storage_label(plan.storage, plan.name), parent_run_id=plan.parent_run_id,
        metric=plan.metric, direction=plan.direction, trials=plan.trials,
        complete=counts["COMPLETE"], pruned=counts["PRUNED"], failed=counts["FAIL"],
    )
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{state}", counts[key], now, 0)
               for key, state in (("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed"))]
    tags = []
    if counts["COMPLETE"]:
        best = study.best_trial
        params = _decoded(plan.space, best.params)
        summary.best_trial, summary.best_value, summary.best_params = best.number, best.value, params
        summary.best_run_id = best.user_attrs.get(_ATTR_RUN_ID)
        metrics.append(Metric(f"best_{plan.metric}", float(best.value), now, 0))
        tags += [RunTag("capexp.best_trial", str(best.number)), RunTag("capexp.best_run_id", summary.best_run_id or "")]
        tags += [RunTag(f"best.{k}", param_value(v)) for k, v in params.items()]
    client.log_batch(plan.parent_run_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory(prefix="capexp-study-") as tmp:
        folder = Path(tmp)
        _trials_table(study, plan.space).to_csv(folder / "trials.csv", index=False)
        client.log_artifact(plan.parent_run_id, str(folder / "trials.csv"))
        if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False)):
            for path in _plots(study, folder):
                client.log_artifact(plan.parent_run_id, str(path), artifact_path="plots")
    if status != "RUNNING":
        client.set_terminated(plan.parent_run_id, status)
    return summary


# ---------------------------------------------------------------------------- the command
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
) -> StudySummary:
    """Search `space` (default `studies/default.json`) around `base` (default: the quickstart)
    until the study has `trials` complete or pruned trials, resuming a study of that name.

    `storage`: None for `studies/<name>.journal`, a journal file path, or a database URL
    (PostgreSQL for workers on several machines, with `heartbeat_interval` seconds between
    heartbeats). `workers` processes run trials in parallel. `enqueue` specs run first.
    """
    import optuna

    base = Path(base) if base is not None else default_base()
    name = name or base.stem
    if not _NAME.match(name):
        raise CapexpError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (it names the study file and runs).")
    if trials < 1 or workers < 1:
        raise CapexpError(f"--trials and --workers must be >= 1, got {trials} and {workers}.")
    origin = str(space) if space is not None else "studies/default.json"
    spec = load_spec(base, overrides)
    check_spec(spec, str(base))
    raw = load_space(space)
    depth = _decoder_depth(spec)
    fitted = raw.fit_to_depth(depth, origin)
    _check_values(fitted, base, overrides, origin)
    metric, direction = _auto_objective(fitted, spec)
    if isinstance(fitted.sampler, GridSampler):
        points = math.prod(len(p.choices) for p in fitted.params.values())  # type: ignore[union-attr]
        if trials > points:
            warn(f"{origin}: the grid has {points} points, so the study runs {points} trials, not {trials}.")
            trials = points

    study = optuna.create_study(study_name=name, storage=open_storage(storage, name, heartbeat_interval),
                                direction=direction, load_if_exists=True)
    if study.direction.name.lower() != direction or study.user_attrs.get(_ATTR_METRIC, metric) != metric:
        raise CapexpError(
            f"study {name} was created to {study.direction.name.lower()} "
            f"{study.user_attrs.get(_ATTR_METRIC)!r}, but this run asks to {direction} {metric!r}. "
            f"Use a new --name for a new objective."
        )
    if study.user_attrs.get(_ATTR_BASE_HASH, spec_hash(spec)) != spec_hash(spec):
        warn(f"study {name}: the base spec ({base}) changed since the study began; old and new trials are not comparable.")
    for key, value in ((_ATTR_METRIC, metric), (_ATTR_BASE_HASH, spec_hash(spec))):
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    _enqueue(study, enqueue, raw, fitted, depth)

    uri = use_store(tracking_uri)
    exp_id = experiment_id(experiment)
    parent = _parent_run(
        uri, name, exp_id,
        tags={TAG_STUDY: name, TAG_STUDY_ROLE: "parent", **({"mlflow.note.content": raw.notes} if raw.notes else {})},
        params={"study.base": str(base), "study.space": origin, "study.storage": _storage_label(storage, name),
                "objective.metric": metric, "objective.direction": direction,
                "sampler": raw.sampler.name, "pruner": raw.pruner.name,
                **{f"space.{k}": p.model_dump_json(exclude_none=True) for k, p in fitted.params.items()}},
    )
    # Trials run the base as it is now, even if its file is edited while the study runs.
    snapshot = Path(tempfile.mkdtemp(prefix="capexp-study-")) / f"{base.stem}.json"
    snapshot.write_text(spec.model_dump_json(indent=2))
    counts = _counts(study)
    plan = _Plan(
        name=name, storage=storage, base=str(base), snapshot=str(snapshot), space=fitted, metric=metric,
        direction=direction, num_epochs=spec.training_config.num_epochs, trials=trials, experiment=experiment,
        tracking_uri=uri, parent_run_id=parent, heartbeat_interval=heartbeat_interval,
        seed_offset=sum(counts.values()), threads=max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0,
        log_level=logging.getLogger("capexp").getEffectiveLevel(),
    )
    done = counts["COMPLETE"] + counts["PRUNED"]
    log.info("study %s: %d of %d trials done; %s with %d worker(s); storage %s; MLflow parent run %s",
             name, done, trials, "running the rest" if done < trials else "nothing to run",
             workers, _storage_label(storage, name), parent)
    status = "FAILED"
    try:
        problems: list[str] = []
        if workers > 1:
            problems = _run_workers(plan, workers)
        else:
            _work(plan, 0)
        counts = _counts(study)
        done = counts["COMPLETE"] + counts["PRUNED"]
        if isinstance(fitted.sampler, GridSampler) and _grid_points_run(study) >= trials:
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
        status = "FINISHED" if done >= trials else "RUNNING"
    except KeyboardInterrupt:
        status = "KILLED"
        warn(f"study {name} interrupted; run the same command again to resume it.")
        raise
    finally:
        shutil.rmtree(snapshot.parent, ignore_errors=True)
        summary = _summarize(study, plan, status)
    return summary
