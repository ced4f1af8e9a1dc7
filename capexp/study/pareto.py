"""Studies of several objectives, such as quality and cost: the objectives as a search space
writes them, each trial's value of each, the Pareto front, and the `--pick` rule that chooses
one member of the front.

A space's `objective` is one object, or a list of two or more, e.g.
`[{"metric": "cider", "direction": "maximize"}, {"metric": "train_minutes", "direction": "minimize"}]`.
A trial's value of a metric is its best epoch's, except for run totals (`train_minutes`, the
wall time of all its epochs), which are the last logged value.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Tag

from capexp.errors import CapexpError
from capexp.tracking.names import METRIC_TRAIN_MINUTES, PARAM_DIRECTIONS, PARAM_OBJECTIVES

__all__ = [
    "Objective", "Objectives", "Member", "Rule", "RUN_TOTALS", "check_pruner", "objective_list",
    "objective_value", "objective_params", "objectives_of", "pareto_front", "default_pick", "parse_pick", "pick",
]

RUN_TOTALS = frozenset({METRIC_TRAIN_MINUTES})  # metrics whose last value, not their best epoch's, scores a trial

class Objective(BaseModel):
    """What a trial is scored by: the best per-epoch value of `metric` over its epochs (run totals: the last)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = "auto"  # auto: cider when COCO metrics are on and Java exists, else bertscore_f1
    direction: Literal["auto", "maximize", "minimize"] = "auto"  # auto: minimize losses and costs, maximize the rest


def _several(objectives: list[Objective]) -> list[Objective]:
    if len(objectives) < 2:
        raise ValueError('a list needs two objectives or more; write one objective as an object, e.g. {"metric": "cider"}')
    metrics = [o.metric for o in objectives]
    repeated = sorted({m for m in metrics if metrics.count(m) > 1})
    if repeated:
        raise ValueError(f"names {', '.join(repeated)} more than once; give each metric once")
    return objectives


Objectives = Annotated[
    Union[Annotated[Objective, Tag("objective")], Annotated[list[Objective], AfterValidator(_several), Tag("objectives")]],
    Discriminator(lambda v: "objectives" if isinstance(v, list) else "objective"),
]


def objective_list(objective: Objective | list[Objective]) -> list[Objective]:
    """A space's objective, or each of several, in order."""
    return list(objective) if isinstance(objective, list) else [objective]


def check_pruner(pruner: Any, objective: Objective | list[Objective] | None) -> Any:
    """A pruner named in a space of several objectives must be `none`: Optuna prunes single-objective studies only."""
    if isinstance(objective, list) and getattr(pruner, "name", "none") != "none":
        raise ValueError('pruning works on one objective only; leave `pruner` out or set it to {"name": "none"}')
    return pruner


def objective_value(metric: str, direction: str, history: Sequence[float]) -> float | None:
    """A trial's value of `metric` from its per-epoch `history`: the best epoch's, the last for run totals."""
    if not history:
        return None
    if metric in RUN_TOTALS:
        return float(history[-1])
    return float(max(history) if direction == "maximize" else min(history))


# ---------------------------------------------------------------------------- the front
@dataclass(frozen=True)
class Member:
    """A complete trial: its number and its value of each objective metric."""

    number: int
    values: dict[str, float]


def _dominates(a: Member, b: Member, objectives: Sequence[tuple[str, str]]) -> bool:
    signs = [(1 if d == "maximize" else -1, m) for m, d in objectives]
    return all(s * a.values[m] >= s * b.values[m] for s, m in signs) and any(s * a.values[m] > s * b.values[m] for s, m in signs)


def pareto_front(members: Sequence[Member], objectives: Sequence[tuple[str, str]]) -> list[Member]:
    """The members no other member dominates, best first by the first objective."""
    front = [m for m in members if not any(_dominates(o, m, objectives) for o in members)]
    metric, direction = objectives[0]
    return sorted(front, key=lambda m: ((-1 if direction == "maximize" else 1) * m.values[metric], m.number))


# ---------------------------------------------------------------------------- the --pick rule
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_NAME = r"[A-Za-z_][\w.]*"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOUND = re.compile(rf"^({_NAME})\s*(>=|<=|>|<)\s*(?:({_NUMBER})\s*\*\s*(best)|(best)|({_NUMBER}))$")
_ORDER = re.compile(rf"^(min|max)\s+({_NAME})$")


@dataclass(frozen=True)
class Bound:
    """METRIC OP X: X is `value`, or `value` times the front's best value of METRIC when `relative`."""

    metric: str
    op: str
    value: float
    relative: bool
    text: str


@dataclass(frozen=True)
class Rule:
    """A parsed `--pick`: bounds every picked member meets, then the metric to minimize or maximize."""

    text: str
    bounds: tuple[Bound, ...]
    order: tuple[str, str] | None  # ("min" or "max", metric)

    def metrics(self) -> list[str]:
        return [*(b.metric for b in self.bounds), *([self.order[1]] if self.order else [])]


def _syntax_error(text: str, clause: str, why: str) -> CapexpError:
    return CapexpError(
        f"--pick {text!r}: {clause!r} {why}. Write comma-separated bounds such as `cider>=0.98*best` or "
        f"`train_minutes<=5`, then at most one `min METRIC` or `max METRIC`."
    )


def parse_pick(text: str) -> Rule:
    """Parse a `--pick` rule (syntax: `capexp study --help`); CapexpError on bad syntax."""
    bounds: list[Bound] = []
    order: tuple[str, str] | None = None
    for clause in (c.strip() for c in text.split(",")):
        if (found := _BOUND.match(clause)) is not None:
            if order is not None:
                raise _syntax_error(text, clause, "follows the `min`/`max` clause, which must come last")
            metric, op, factor, rel, alone, number = found.groups()
            relative = rel is not None or alone is not None
            value = float(factor) if factor is not None else 1.0 if alone is not None else float(number)
            bounds.append(Bound(metric, op, value, relative, clause))
        elif (found := _ORDER.match(clause)) is not None:
            if order is not None:
                raise _syntax_error(text, clause, "is a second `min`/`max` clause; give one")
            order = (found.group(1), found.group(2))
        else:
            raise _syntax_error(text, clause, "is neither a bound nor an order")
    return Rule(text, tuple(bounds), order)


def default_pick(objectives: Sequence[tuple[str, str]]) -> str:
    """The rule `--pick` defaults to: the first objective within 2% of its best, then the best of the second."""
    first, direction = objectives[0]
    best_first = f"{'max' if direction == 'maximize' else 'min'} {first}"
    if len(objectives) == 1:
        return best_first
    second, then = objectives[1]
    bound = f"{first}>=0.98*best" if direction == "maximize" else f"{first}<=1.02*best"
    return f"{bound}, {'max' if then == 'maximize' else 'min'} {second}"


def _shown(member: Member) -> str:
    return f"#{member.number} " + " ".join(f"{k}={v:.4g}" for k, v in member.values.items())


def pick(front: Sequence[Member], rule: Rule, objectives: Sequence[tuple[str, str]], study: str) -> Member:
    """The member of `front` that `rule` picks; CapexpError when the rule names a metric the study
    does not have, or no member meets its bounds."""
    directions = dict(objectives)
    unknown = [m for m in dict.fromkeys(rule.metrics()) if m not in directions]
    if unknown:
        raise CapexpError(
            f"--pick {rule.text!r}: study {study} has no objective {', '.join(map(repr, unknown))}; its objectives are "
            f"{', '.join(directions)}. Name one of these."
        )
    candidates = list(front)
    for bound in rule.bounds:
        values = [m.values[bound.metric] for m in front]
        best = max(values) if directions[bound.metric] == "maximize" else min(values)
        limit = bound.value * best if bound.relative else bound.value
        candidates = [m for m in candidates if _OPS[bound.op](m.values[bound.metric], limit)]
        if not candidates:
            raise CapexpError(
                f"--pick {rule.text!r}: no member of study {study}'s Pareto front meets {bound.text!r} (that is "
                f"{bound.metric} {bound.op} {limit:.4g}) after the bounds before it; the front: "
                f"{'; '.join(map(_shown, front))}. Loosen the rule."
            )
    way, metric = rule.order or ("max" if objectives[0][1] == "maximize" else "min", objectives[0][0])
    return min(candidates, key=lambda m: ((-1 if way == "max" else 1) * m.values[metric], m.number))


def objective_params(objectives: Sequence[tuple[str, str]]) -> dict[str, str]:
    """A study parent run's params for several objectives (none for one): metrics and directions, comma-separated."""
    if len(objectives) <= 1:
        return {}
    return {PARAM_OBJECTIVES: ",".join(m for m, _ in objectives), PARAM_DIRECTIONS: ",".join(d for _, d in objectives)}


def objectives_of(params: dict[str, str]) -> list[tuple[str, str]]:
    """The objectives a study parent run's params name (`objective_params`); empty for a single objective."""
    metrics, directions = params.get(PARAM_OBJECTIVES, ""), params.get(PARAM_DIRECTIONS, "")
    return list(zip(metrics.split(","), directions.split(","))) if metrics else []
