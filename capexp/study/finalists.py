"""Finalists at full budget: after the search, the best K complete trials and the control are
retrained with the base spec's own budget (the space's `budget` left out), S seeds each. The
winner is the best mean full-budget validation objective (test data never chooses), and the rank
correlation between the trial-budget objective and the full-budget mean says how far the cheap
budget can be trusted to order configurations.

Each finalist run is a child of the study's parent, tagged `capexp.finalist=<trial number>`
("control" for a control outside the space) and `capexp.finalist_seed`; a rerun resumes them.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from capexp.errors import CapexpError, warn
from capexp.spec.loading import load_spec
from capexp.spec.schema import Spec
from capexp.study.child_runs import child_run, child_to_run, objective_value
from capexp.study.control import CONTROL, control_outcome
from capexp.study.plan import StudyPlan
from capexp.study.trials import console_warnings_only, run_workers
from capexp.tracking.names import (
    ATTR_CONTROL, ATTR_WINNER, FIDELITY_PREFIX, FINALIST_PREFIX, TAG_FINALIST, TAG_FINALIST_SEED, TAG_WINNER,
)

__all__ = ["Finalist", "check_finalists", "run_finalists", "rank_correlations", "fidelity_sentence"]


@dataclass
class Finalist:
    """One configuration retrained at full budget."""

    key: str  # its trial number, or "control" (the control outside the space)
    values: dict[str, Any]  # the searched keys' values
    search_value: float | None  # its objective on the trial budget
    control: bool = False
    full: list[float] = field(default_factory=list)  # its full-budget objective, one per finished seed

    @property
    def label(self) -> str:
        if self.key == CONTROL:
            return CONTROL
        return f"trial {self.key}" + (" (control)" if self.control else "")


def check_finalists(finalists: int | None, seeds: int, objectives: Sequence[tuple[str, str]] = (),
                    origin: str = "the search space") -> None:
    """`--finalists` and `--finalist-seeds` must be at least 1, and the study must have one objective
    (several have no single best to retrain and no single order to check)."""
    if (finalists is not None and finalists < 1) or seeds < 1:
        raise CapexpError(f"--finalists and --finalist-seeds must be 1 or more, got {finalists} and {seeds}; "
                          f"leave --finalists out to skip the full-budget retraining.")
    if finalists is not None and len(objectives) > 1:
        raise CapexpError(
            f"--finalists ranks trials by one objective, but {origin} lists {len(objectives)} "
            f"({', '.join(m for m, _ in objectives)}): leave --finalists out, pick a member of the Pareto front "
            f"with --best-spec --pick and train that spec with `capexp run`."
        )


def _pick(study, plan: StudyPlan, count: int, control: dict[str, Any] | None) -> list[Finalist]:
    """The best `count` complete trials (the control aside), then the control when it has a trial-budget objective."""
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        raise CapexpError(
            f"study {plan.name} has no complete trial, so there is nothing to retrain at full budget. Find out "
            f"why its trials failed or were pruned (`capexp compare --study {plan.name}`), run more with --trials, "
            f"then run the same command with --finalists again."
        )
    searched = sorted((t for t in complete if not t.user_attrs.get(ATTR_CONTROL)), key=lambda t: t.value,
                      reverse=plan.direction == "maximize")
    picked = [Finalist(str(t.number), {k: plan.space.params[k].decode(v) for k, v in t.params.items()}, t.value)
              for t in searched[:count]]
    number, value = control_outcome(study, plan)
    if control is not None and value is not None:
        picked.append(Finalist(CONTROL if number is None else str(number), control, value, control=True))
    return picked


def rank_correlations(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Spearman's and Kendall's rank correlation of `x` and `y` (scipy's, else pandas'), and `spearman_p`: how
    often a random order of `y` ranks at least as well (from three points on); {} when undefined."""
    if len(x) < 2:
        return {}
    try:
        from scipy import stats

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)  # undefined: NaN, left out below
            values = {"spearman": stats.spearmanr(x, y).statistic, "kendall": stats.kendalltau(x, y).statistic}
    except ImportError:
        import pandas as pd

        values = {m: pd.Series(x).corr(pd.Series(y), method=m) for m in ("spearman", "kendall")}
    out = {k: float(v) for k, v in values.items() if v is not None and not math.isnan(v)}
    if "spearman" in out and len(x) >= 3:
        out["spearman_p"] = _spearman_p(x, y)
    return out


def _spearman_p(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided permutation p-value of Spearman's rho: the share of orderings of `y` whose rho is at least
    the observed one; exact up to 8 points (every ordering, the observed one among them), else from 20,000
    random ones (seed 0), counting the observed one too so that it is never 0."""
    import itertools

    import numpy as np
    import pandas as pd

    rx, ry = (pd.Series(v).rank().to_numpy() for v in (x, y))  # average ranks: ties as scipy counts them
    rx, ry = rx - rx.mean(), ry - ry.mean()
    n = len(rx)
    orders = (np.array(list(itertools.permutations(range(n)))) if n <= 8
              else np.argsort(np.random.default_rng(0).random((20_000, n)), axis=1))
    at_least = int(np.sum(ry[orders] @ rx >= rx @ ry - 1e-9))  # rho's denominator is the same for every order
    return at_least / len(orders) if n <= 8 else (at_least + 1) / (len(orders) + 1)


def fidelity_sentence(spearman: float | None, count: int, p: float | None = None) -> str:
    """One sentence on how the trial budget ranked `count` finalists (`p`: `rank_correlations`' spearman_p)."""
    if spearman is None:
        return (f"The fidelity check needs two finalists whose objectives differ; {count} finished at full "
                f"budget, so the search's order is untested.")
    if count < 4:
        verdict = f"{count} finalists are too few to test the order, so treat the search's order as a hint"
    else:
        verdict = ("the search's order held at full budget" if spearman >= 0.8 else
                   "treat the search's order as a rough guide" if spearman >= 0.5 else
                   "treat the search's order as a hint")
    chance = f" (a random order of the {count} ranks as well {100 * p:.2g}% of the time)" if p is not None else ""
    return f"The trial budget ranked the finalists with Spearman {spearman:.2f}{chance}: {verdict}."


def run_finalists(study, plan: StudyPlan, count: int, seeds: int, full: str, control: dict[str, Any] | None) -> list[str]:
    """Retrain the finalists from `full` (the base spec file at full budget), log what they show on the
    parent run, and return it as lines for the console. `control`: the control's values (None: no control)."""
    from mlflow import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    base_seed = load_spec(full).seed
    finalists = _pick(study, plan, count, control)
    jobs: list[tuple[Finalist, _Job]] = []
    for finalist in finalists:
        sets = [] if finalist.control else [f"{k}={json.dumps(v)}" for k, v in finalist.values.items()]
        for seed in range(base_seed, base_seed + seeds):
            name = f"{plan.name}-final-{finalist.key}-s{seed}"
            spec = load_spec(full, [*sets, f"seed={seed}", f"id={json.dumps(name)}"])
            tags = {TAG_FINALIST: finalist.key, TAG_FINALIST_SEED: str(seed)}
            jobs.append((finalist, (spec, tags, f"finalist {finalist.label} seed {seed}", finalist.values)))
    todo = [k for k, (_, job) in enumerate(jobs) if child_to_run(plan, job[1])]
    workers = min(plan.workers, len(todo))  # on a resume, no more workers than runs left
    if workers > 1:  # each worker takes the next run when it is free; this process then only collects them
        import multiprocessing

        queue = multiprocessing.get_context("spawn").SimpleQueue()
        for k in [*todo, *[None] * workers]:
            queue.put(k)
        problems = run_workers(plan, workers, functools.partial(_share, [job for _, job in jobs], queue))
        if problems:
            warn(f"study {plan.name}: finalists: " + "; ".join(problems) + ".")
    for finalist, job in jobs:
        run = child_run(plan, *job, start=workers <= 1)
        if run is not None:
            finalist.full.append(objective_value(client, run, plan))
    return _conclude(study, plan, [f for f in finalists if f.full], seeds)


_Job = tuple[Spec, dict[str, str], str, dict[str, Any]]  # child_run's spec, tags, label and values


def _share(jobs: list[_Job], queue: Any, plan: StudyPlan, index: int) -> None:
    """A worker's share of the finalist runs: the index of the next one from `queue`, until a None."""
    with console_warnings_only(plan):
        while (k := queue.get()) is not None:
            child_run(plan, *jobs[k])


def _conclude(study, plan: StudyPlan, finished: list[Finalist], seeds: int) -> list[str]:
    """The winner and the fidelity check, logged on the parent run (and the winner on the study)."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    if not finished:
        return ["finalists: none finished at full budget; run the same command again to retry them."]
    better = max if plan.direction == "maximize" else min
    winner = better(finished, key=lambda f: statistics.fmean(f.full))
    scored = [f for f in finished if f.search_value is not None]
    fidelity = rank_correlations([f.search_value for f in scored], [statistics.fmean(f.full) for f in scored])  # type: ignore[misc]
    now = int(time.time() * 1000)
    metrics = [Metric(f"{FIDELITY_PREFIX}{k}", v, now, 0) for k, v in fidelity.items()]
    for f in finished:
        metrics.append(Metric(f"{FINALIST_PREFIX}{f.key}.mean", statistics.fmean(f.full), now, 0))
        if len(f.full) > 1:
            metrics.append(Metric(f"{FINALIST_PREFIX}{f.key}.sd", statistics.stdev(f.full), now, 0))
    MlflowClient(plan.tracking_uri).log_batch(plan.parent_run_id, metrics=metrics, tags=[RunTag(TAG_WINNER, winner.key)])
    study.set_user_attr(ATTR_WINNER, winner.key)
    shown = ", ".join(f"{f.label} {statistics.fmean(f.full):.4f}" + (f" ± {statistics.stdev(f.full):.4f}" if len(f.full) > 1 else "")
                      for f in finished)
    return [f"finalists at full budget ({plan.metric}, mean ± sd over up to {seeds} seed(s)): {shown}",
            f"winner: {winner.label}. " + fidelity_sentence(fidelity.get("spearman"), len(scored), fidelity.get("spearman_p"))]
