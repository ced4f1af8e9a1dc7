"""The control trial: the base spec's own values of the searched keys, run first on the trial budget,
so every study shows how the hand-tuned starting point does beside what the search found.

Where every value lies inside the space, the control is an ordinary (enqueued) trial and the
sampler learns from it. Where one lies outside (the quickstart's 64 px among sizes 50 and 224), it
is a child run of the study's parent that the sampler never sees. Either way its run is tagged
`capexp.control=true`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from capexp.spec.schema import Spec
from capexp.spec.loading import flatten, load_spec
from capexp.study.child_runs import child_run, objective_value
from capexp.study.plan import StudyPlan
from capexp.study.params import active_values
from capexp.study.space import SearchSpace
from capexp.tracking import ATTR_RUN_NAME
from capexp.tracking.names import ATTR_CONTROL, TAG_CONTROL, TAG_FINALIST, TAG_TRIAL
from capexp.tracking.study_runs import study_runs

if TYPE_CHECKING:
    from mlflow.entities import Run

__all__ = ["CONTROL", "control_values", "enqueue_control", "run_outside_control", "outside_control_run",
           "control_outcome", "mark_control"]

CONTROL = "control"


def control_values(spec: Spec, space: SearchSpace) -> dict[str, Any]:
    """The base spec's own value of each searched key (of those its own values turn on: see `when`)."""
    flat = flatten(spec, sections=True)
    return active_values(space.params, flat, lambda key, _: flat.get(key))


def _encoded(space: SearchSpace, values: dict[str, Any]) -> dict[str, Any] | None:
    """`values` as Optuna stores them, or None when one lies outside the space."""
    try:
        return {key: space.params[key].encode(value) for key, value in values.items()}
    except ValueError:
        return None


def enqueue_control(study, space: SearchSpace, values: dict[str, Any], name: str, trials: int) -> bool:
    """Queue the control as the study's next trial unless it has one (or its `trials` are all done);
    False when the control lies outside the space."""
    from optuna.trial import TrialState

    params = _encoded(space, values)
    if params is None:
        return False
    existing = study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in existing)
    if done < trials and not any(t.user_attrs.get(ATTR_CONTROL) for t in existing):
        study.enqueue_trial(params, user_attrs={ATTR_CONTROL: True, ATTR_RUN_NAME: f"{name}-{CONTROL}"})
    return True


def _outside_tags() -> dict[str, str]:
    return {TAG_CONTROL: "true"}


def run_outside_control(plan: StudyPlan, values: dict[str, Any]) -> Run | None:
    """Run the control outside the space (unless it ran already): the base on the trial budget."""
    spec = load_spec(plan.snapshot, [f"id={json.dumps(f'{plan.name}-{CONTROL}')}"])
    return child_run(plan, spec, _outside_tags(), f"{CONTROL} (outside the space)", values)


def outside_control_run(plan: StudyPlan) -> Run | None:
    """The finished run of the control outside the space, if there is one."""
    from mlflow import MlflowClient

    client = MlflowClient(plan.tracking_uri)
    runs = study_runs(client, plan.experiment, plan.name, parent=plan.parent_run_id, tags=_outside_tags(),
                      status="FINISHED")
    runs = [r for r in runs if TAG_TRIAL not in r.data.tags and TAG_FINALIST not in r.data.tags]
    return runs[-1] if runs else None


def control_outcome(study, plan: StudyPlan) -> tuple[int | None, float | None]:
    """The control's trial number (None outside the space) and its trial-budget objective (None: not done;
    with several objectives, the first)."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    inside = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ATTR_CONTROL)]
    done = [t for t in inside if t.state == TrialState.COMPLETE]
    if done:
        return done[-1].number, done[-1].values[0]
    if inside:
        return inside[-1].number, None
    run = outside_control_run(plan)
    return None, objective_value(MlflowClient(plan.tracking_uri), run, plan) if run is not None else None


def mark_control(ax: Any, number: int | None, value: float | None) -> None:
    """Mark the control on the optimization-history plot: its trial's point, or (outside the space) a dashed line."""
    if value is None:
        return
    if number is None:
        ax.axhline(value, linestyle="--", color="grey", label="control (outside the space)")
    else:
        ax.annotate(CONTROL, (number, value), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.legend(loc="best")
