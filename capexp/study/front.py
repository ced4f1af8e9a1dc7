"""An Optuna study of several objectives: each trial's values (read back from its MLflow run), the
study's Pareto front, and what the progress lines, `--keep-models` and `trials.csv` make of it.
A single-objective study goes through the same functions unchanged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from capexp.errors import CapexpError
from capexp.study.pareto import Member, default_pick, objective_value, pareto_front, parse_pick, pick
from capexp.study.plan import StudyPlan
from capexp.tracking.names import ATTR_METRIC

__all__ = [
    "several", "run_values", "members", "study_front", "value_text", "best_text", "ranked", "value_columns",
    "first_value", "picked_trial",
]


def several(plan: StudyPlan) -> bool:
    """Whether the study has several objectives (then no pruning, and no single best trial)."""
    return len(plan.objectives) > 1


def run_values(plan: StudyPlan, run_id: str, number: int) -> tuple[float, ...]:
    """Trial `number`'s value of each objective, from its MLflow run `run_id`'s metric histories."""
    from mlflow import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    values = []
    for metric, direction in plan.objectives:
        value = objective_value(metric, direction, [m.value for m in client.get_metric_history(run_id, metric)])
        if value is None:
            logged = sorted(client.get_run(run_id).data.metrics)
            raise CapexpError(
                f"study {plan.name}: the objective metric {metric!r} is not logged by trial {number} (run {run_id}); it "
                f"logs {', '.join(logged)}. Name one of these in the search-space file's `objective` and use a new --name."
            )
        values.append(value)
    return tuple(values)


def members(study: Any, objectives: Sequence[tuple[str, str]]) -> list[Member]:
    """The study's complete trials, each with its values by metric."""
    from optuna.trial import TrialState

    return [Member(t.number, {m: float(v) for (m, _), v in zip(objectives, t.values)})
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def study_front(study: Any, objectives: Sequence[tuple[str, str]]) -> list[Member]:
    """The study's Pareto front, best first by the first objective."""
    return pareto_front(members(study, objectives), objectives)


def value_text(trial: Any, plan: StudyPlan) -> str:
    """A complete trial's objective values, e.g. "cider 0.4123, train_minutes 1.52"."""
    objectives = plan.objectives or ((plan.metric, plan.direction),)
    return ", ".join(f"{m} {v:.4f}" for (m, _), v in zip(objectives, trial.values))


def best_text(study: Any, complete: Sequence[Any], plan: StudyPlan) -> str:
    """The progress line's best so far: the best value, or the Pareto front's trial numbers."""
    if several(plan):
        return "front " + " ".join(f"#{m.number}" for m in study_front(study, plan.objectives))
    best = (max if plan.direction == "maximize" else min)(complete, key=lambda t: t.value)
    return f"best #{best.number} {best.value:.4f}"


def ranked(study: Any, complete: Sequence[Any], plan: StudyPlan) -> list[Any]:
    """Complete trials best first: by the objective, or the Pareto front first (by the first objective), then the rest."""
    if not several(plan):
        return sorted(complete, key=lambda t: t.value, reverse=plan.direction == "maximize")
    order = {m.number: i for i, m in enumerate(study_front(study, plan.objectives))}
    sign = -1 if plan.objectives[0][1] == "maximize" else 1
    return sorted(complete, key=lambda t: (order.get(t.number, len(order)), sign * t.values[0]))


def value_columns(trial: Any, objectives: Sequence[tuple[str, str]]) -> dict[str, float | None]:
    """A trial's `trials.csv` columns: `value`, or one column per objective metric."""
    if len(objectives) <= 1:
        return {"value": trial.value}
    return {m: (trial.values[i] if trial.values else None) for i, (m, _) in enumerate(objectives)}


def first_value(plan: StudyPlan) -> Callable[[Any], float] | None:
    """The target Optuna's importances and single-objective plots take: None, or the first objective."""
    return (lambda t: t.values[0]) if several(plan) else None


def picked_trial(study: Any, name: str, rule: str | None) -> tuple[Any, str | None]:
    """The trial `--best-spec` takes, and what to say of its values: the best trial (None said) of a
    single-objective study without `rule`; else the member of the Pareto front `rule` (default
    `default_pick`) chooses."""
    metrics = str(study.user_attrs.get(ATTR_METRIC, "objective")).split(",")
    objectives = [(m, d.name.lower()) for m, d in zip(metrics, study.directions)]
    if len(objectives) == 1 and rule is None:
        return study.best_trial, None
    parsed = parse_pick(rule or default_pick(objectives))
    front = study_front(study, objectives)
    member = pick(front, parsed, objectives, name)
    values = ", ".join(f"{m} {v:.4f}" for m, v in member.values.items())
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == member.number)
    return trial, f"{values}; picked by {parsed.text!r} from a Pareto front of {len(front)}"
