"""What a study's MLflow parent run holds: the best trial, `trials.csv`, each knob's importance
and the Optuna plots."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from capexp.study.front import first_value, several, value_columns
from capexp.study.pareto import objective_params
from capexp.study.pareto_report import front_lines, front_tags, pareto_plot
from capexp.study.space import SearchSpace
from capexp.study.plan import StudyPlan, StudySummary
from capexp.study.storage import quiet_experimental, storage_label, trial_counts
from capexp.tracking import (
    ATTR_ERROR,
    ATTR_RUN_ID,
    ATTR_RUN_NAME,
    BEST_PREFIX,
    IMPORTANCE_PREFIX,
    PARAM_DIRECTION,
    PARAM_OBJECTIVE,
    PARAM_PRUNER,
    PARAM_SAMPLER,
    PARAM_STUDY_BASE,
    PARAM_STUDY_SPACE,
    PARAM_STUDY_STORAGE,
    SPACE_PREFIX,
    STUDY_PARENT,
    STUDY_PLOTS,
    TAG_BEST_RUN_ID,
    TAG_BEST_TRIAL,
    TAG_NOTE,
    TAG_STUDY,
    TAG_STUDY_ROLE,
    param_value,
)
from capexp.tracking.names import ATTR_CONTROL, OBJECTIVE_IMPORTANCE_PREFIX
from capexp.tracking.study_runs import oldest_parent_run, study_runs
from capexp.study.control import control_outcome, mark_control


def parent_run(uri: str, exp_id: str, name: str, raw: SearchSpace, fitted: SearchSpace, study: dict[str, str],
               objectives: Sequence[tuple[str, str]] = ()) -> str:
    """The study's parent run, found by its tags (a resume reuses it) or created with the study's
    params: `study` names its base, space, storage, metric and direction."""
    from mlflow import MlflowClient
    from mlflow.entities import Param

    what = (f"Optuna study {name}: base spec {study['base']}, search space {study['space']} "
            f"({', '.join(fitted.params)}), objective: {study['direction']} {study['metric']} on the validation split.")
    tags = {TAG_STUDY: name, TAG_STUDY_ROLE: STUDY_PARENT, TAG_NOTE: f"{what}\n\n{raw.notes}".strip()}
    params = {PARAM_STUDY_BASE: study["base"], PARAM_STUDY_SPACE: study["space"], PARAM_STUDY_STORAGE: study["storage"],
              PARAM_OBJECTIVE: study["metric"], PARAM_DIRECTION: study["direction"],
              PARAM_SAMPLER: raw.sampler.name, PARAM_PRUNER: raw.pruner.name,
              **{f"{SPACE_PREFIX}{k}": p.model_dump_json(exclude_none=True) for k, p in fitted.params.items()},
              **objective_params(objectives)}
    client = MlflowClient(uri)
    existing = oldest_parent_run(client, exp_id, name)
    if existing is not None:
        client.update_run(existing, status="RUNNING")
        return existing
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    # Machines that start a new study at the same moment each made one: all keep the oldest.
    keep = oldest_parent_run(client, exp_id, name)
    assert keep is not None
    if keep != run_id:
        client.delete_run(run_id)
    return keep


def _decoded(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    return {k: space.params[k].decode(v) for k, v in params.items() if k in space.params}


def _trials_table(study, space: SearchSpace, objectives: Sequence[tuple[str, str]]) -> Any:
    import pandas as pd

    rows = []
    for t in study.get_trials(deepcopy=False):
        values = _decoded(space, t.params)
        rows.append({
            "number": t.number,
            "state": t.state.name,
            **value_columns(t, objectives),
            "epochs": len(t.intermediate_values),
            **{k: json.dumps(values[k]) if isinstance(values.get(k), (list, dict)) else values.get(k) for k in space.params},
            "control": bool(t.user_attrs.get(ATTR_CONTROL)),
            "run_id": t.user_attrs.get(ATTR_RUN_ID, ""),
            "run_name": t.user_attrs.get(ATTR_RUN_NAME, ""),
            "retry_of": t.system_attrs.get("failed_trial", ""),
            "error": t.user_attrs.get(ATTR_ERROR, ""),
            "seconds": t.duration.total_seconds() if t.duration else None,
        })
    return pd.DataFrame(rows)


def _evaluator() -> Any:
    """fANOVA with a fixed seed, so the importances table and its plot show the same numbers."""
    from optuna.importance import FanovaImportanceEvaluator

    return FanovaImportanceEvaluator(seed=0)


def _importances(study, target: Any = None) -> dict[str, float]:
    """Each searched knob's share of the objective's variance over the complete trials (fANOVA);
    empty with fewer than two complete trials, or when their objectives do not vary."""
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    with quiet_experimental():
        try:
            return get_param_importances(study, evaluator=_evaluator(), target=target)
        except RuntimeError:  # "zero total variance in all trees": nothing to attribute
            return {}


def _plots(study, folder: Path, metric: str, importances: dict[str, float],
           control: tuple[int | None, float | None] = (None, None), value: Any = None) -> list[Path]:
    """The Optuna plots as PNGs, the objective named by its metric (one with too few trials to show
    anything is drawn empty, the importances too when there are none); the optimization history
    marks the `control` (its trial number, None outside the space, and its objective).
    `value`: the target of a study of several objectives (its first objective; None for one), which
    has no per-epoch values to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    target = f"{metric} (validation)"
    drawers = {
        "optimization_history": lambda s: ovm.plot_optimization_history(s, target=value, target_name=target),
        "param_importances": lambda s: _importance_axes(s, bool(importances), value, target),
        "parallel_coordinate": lambda s: ovm.plot_parallel_coordinate(s, target=value, target_name=target),
        "intermediate_values": ovm.plot_intermediate_values,
    }
    made = []
    for name in [n for n in STUDY_PLOTS if value is None or n != "intermediate_values"]:
        with quiet_experimental(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "identical low and high ylims" and the like
            ax = drawers[name](study)
            if name == "optimization_history":
                mark_control(ax, *control)
            fig = ax.figure
            _short_labels(fig, {k for t in study.get_trials(deepcopy=False) for k in t.params})
        fig.set_size_inches(12 if name == "parallel_coordinate" else 9, 5)
        fig.tight_layout()
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    return made


def _importance_axes(study, any_importance: bool, value: Any, target: str) -> Any:
    """Optuna's importances plot of the (first) objective; empty, with a title saying why, when there
    is none. A study's further objectives are left to the importances table: Optuna 5's Matplotlib
    plot of several objectives sorts each one's bars on its own but labels them all in the last one's order."""
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    if not any_importance:
        return plt.figure().add_subplot(title="No importances: the complete trials' objectives do not vary")
    return ovm.plot_param_importances(study, evaluator=_evaluator(), target=value, target_name=target)


def _short_labels(fig: Any, names: set[str]) -> None:
    """Tick labels as the trials table writes them: `scst` for the param `training_config.scst` (of
    `names`, whole or cut short with "..."), 3 for its JSON section, lite0 and lite2 on an axis of
    efficientnet-lite0 and efficientnet-lite2."""
    from capexp.study.progress import short_key, short_value

    def keys(labels: list[str]) -> list[str]:  # Optuna orders params by name: the i-th of a cut label is the i-th match
        seen: dict[str, int] = {}
        out = []
        for text in labels:
            found = sorted(n for n in names if n == text or (text.endswith("...") and n.startswith(text[:-3])))
            seen[text] = seen.get(text, -1) + 1
            out.append(short_key(found[seen[text]]) if seen[text] < len(found) else text)
        return out

    def value(text: str) -> str:  # a list or section, as Optuna stores a categorical choice
        try:
            return short_value(json.loads(text)) if text[:1] in "{[" else text
        except json.JSONDecodeError:
            return text

    def values(labels: list[str]) -> list[str]:  # lite0, lite1 for efficientnet-lite0, efficientnet-lite1
        if labels and all(t in names for t in labels):  # the importance plot's bars
            return [short_key(t) for t in labels]
        texts = [value(t) for t in labels]
        words = [t for t in texts if t and t != "None" and not t.startswith("$") and not _number(t)]  # $: mathtext
        prefix = os.path.commonprefix(words) if len(words) > 1 else ""
        cut = max(prefix.rfind(c) for c in "-/_") + 1
        return [t[cut:] if cut and t.startswith(prefix[:cut]) else t for t in texts]

    for ax in fig.axes:
        for axis, rename in ((ax.xaxis, keys), (ax.yaxis, values)):
            labels = [t.get_text() for t in axis.get_ticklabels()]
            renamed = rename(labels)
            if renamed != labels:
                axis.set_ticks(axis.get_ticklocs(), renamed)


def _number(text: str) -> bool:
    try:
        float(text.replace("\N{MINUS SIGN}", "-"))
    except ValueError:
        return False
    return True


def _cost(client: Any, plan: StudyPlan) -> dict[str, float]:
    """Worker-minutes of the study's ended child runs (trials, control, finalists; every attempt) and
    the share of them spent putting images through the feature cache."""
    runs = [r for r in study_runs(client, plan.experiment, plan.name, parent=plan.parent_run_id) if r.info.end_time]
    return {"worker_minutes": sum(r.info.end_time - r.info.start_time for r in runs) / 60_000,
            "encode_minutes": sum(r.data.metrics.get("encode_minutes", 0.0) for r in runs)}


def summarize(study, plan: StudyPlan, status: str) -> StudySummary:
    """Write the best trial, the trials table and the plots to the parent run; end it with
    `status` unless that is RUNNING (other workers still run trials)."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag
    from optuna.trial import TrialState

    client = MlflowClient(plan.tracking_uri)
    counts = trial_counts(study)
    summary = StudySummary(
        name=plan.name, storage=storage_label(plan.storage, plan.name), parent_run_id=plan.parent_run_id,
        metric=plan.metric, direction=plan.direction, trials=plan.trials,
        complete=counts["COMPLETE"], pruned=counts["PRUNED"], failed=counts["FAIL"],
    )
    now = int(time.time() * 1000)
    metrics = [Metric(f"trials_{state}", counts[key], now, 0)
               for key, state in (("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed"))]
    tags = []
    if counts["COMPLETE"] and not several(plan):
        best = study.best_trial
        params = _decoded(plan.space, best.params)
        summary.best_trial, summary.best_value, summary.best_params = best.number, best.value, params
        summary.best_run_id = best.user_attrs.get(ATTR_RUN_ID)
        metrics.append(Metric(f"best_{plan.metric}", float(best.value), now, 0))
        tags += [RunTag(TAG_BEST_TRIAL, str(best.number)), RunTag(TAG_BEST_RUN_ID, summary.best_run_id or "")]
        tags += [RunTag(f"{BEST_PREFIX}{k}", param_value(v)) for k, v in params.items()]
    if counts["COMPLETE"] and several(plan):
        summary.front = front_lines(study, plan)
        tags += [RunTag(k, v) for k, v in front_tags(study, plan).items()]
    importances = _importances(study, first_value(plan))
    metrics += [Metric(f"{IMPORTANCE_PREFIX}{k}", float(v), now, 0) for k, v in importances.items()]
    for i, (metric, _) in enumerate(plan.objectives[1:], start=1):  # what each further objective (minutes) hangs on
        more = _importances(study, lambda t, i=i: t.values[i])
        metrics += [Metric(f"{OBJECTIVE_IMPORTANCE_PREFIX}{metric}/{k}", float(v), now, 0) for k, v in more.items()]
    metrics += [Metric(k, v, now, 0) for k, v in _cost(client, plan).items()]
    client.log_batch(plan.parent_run_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory(prefix="capexp-study-") as tmp:
        folder = Path(tmp)
        _trials_table(study, plan.space, plan.objectives).to_csv(folder / "trials.csv", index=False)
        client.log_artifact(plan.parent_run_id, str(folder / "trials.csv"))
        if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False)):
            control = control_outcome(study, plan)
            plots = _plots(study, folder, plan.metric, importances, control, first_value(plan))
            done = control[0] if control[1] is not None else None  # the control trial, once complete
            for path in plots + pareto_plot(study, folder, plan, done):
                client.log_artifact(plan.parent_run_id, str(path), artifact_path="plots")
    if status != "RUNNING":
        client.set_terminated(plan.parent_run_id, status)
    return summary
