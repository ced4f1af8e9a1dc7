"""What a study of several objectives adds to its report: the Pareto front on the console, its
trial numbers as a parent-run tag, and Optuna's Pareto-front plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capexp.errors import CapexpError
from capexp.study.front import picked_trial, several, study_front
from capexp.study.plan import StudyPlan
from capexp.study.progress import short_key, short_value
from capexp.tracking.names import PARETO_PLOT, TAG_PARETO_FRONT

__all__ = ["front_lines", "front_tags", "pareto_plot"]


def _knob_text(plan: StudyPlan, params: dict[str, Any]) -> str:
    values = {k: plan.space.params[k].decode(v) for k, v in params.items() if k in plan.space.params}
    return " ".join(f"{short_key(k)}={short_value(v)}" for k, v in values.items())


def front_lines(study: Any, plan: StudyPlan) -> list[str]:
    """The console's Pareto front: a heading, then one line per member, best first by the first objective."""
    front = study_front(study, plan.objectives)
    if not front:
        return []
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    goals = ", ".join(f"{d} {m}" for m, d in plan.objectives)
    lines = [f"Pareto front ({goals}): {len(front)} trial(s); pick one with --best-spec --pick RULE"]
    for m in front:
        values = " ".join(f"{k}={v:.4f}" for k, v in m.values.items())
        lines.append(f"  trial {m.number}: {values} | {_knob_text(plan, trials[m.number].params)}")
    return lines


def front_tags(study: Any, plan: StudyPlan) -> dict[str, str]:
    """The parent run's tag naming the front's trials, e.g. {"capexp.pareto_front": "3,5,8"}."""
    return {TAG_PARETO_FRONT: ",".join(str(m.number) for m in study_front(study, plan.objectives))}


def _marks(study: Any, name: str, control: int | None) -> dict[int, str]:
    """The trials the Pareto plot names: the `control` trial (None: none complete in the space), and
    the member `--best-spec` picks by default."""
    marks = {} if control is None else {control: "control"}
    try:
        picked = picked_trial(study, name, None)[0].number
    except CapexpError:  # no member meets the default rule
        return marks
    marks[picked] = f"{marks[picked]}, default pick" if picked in marks else "default pick"
    return marks


def pareto_plot(study: Any, folder: Path, plan: StudyPlan, control: int | None = None) -> list[Path]:
    """Optuna's Pareto-front plot of the first two objectives as `<folder>/pareto_front.png`, the
    `control` trial (complete, in the space) and the default pick named (none for one objective)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    from capexp.study.storage import quiet_experimental

    if not several(plan):
        return []
    names = [f"{m} ({d})" for m, d in plan.objectives[:2]]
    with quiet_experimental():
        ax = ovm.plot_pareto_front(study, targets=lambda t: t.values[:2], target_names=names)
    for number, label in _marks(study, plan.name, control).items():
        ax.annotate(label, tuple(study.trials[number].values[:2]), textcoords="offset points", xytext=(6, 6), fontsize=9)
    fig = ax.figure
    fig.set_size_inches(9, 5)
    fig.tight_layout()
    path = folder / f"{PARETO_PLOT}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


