"""The runs a table shows, read from the MLflow store only (no spec files): one `RunRecord` each."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from capexp.errors import CapexpError
from capexp.spec.schema import metric_mode
from capexp.study.pareto import objectives_of
from capexp.tracking import (
    DEFAULT_EXPERIMENT,
    IMPORTANCE_PREFIX,
    PARAM_DIRECTION,
    PARAM_OBJECTIVE,
    PARAM_VOCABULARY_SIZE,
    SPACE_PREFIX,
    STUDY_PLOTS,
    TAG_NOTE,
    TAG_PARENT,
    TAG_PRUNED,
    TAG_STUDY,
    find_runs,
    runs_in,
    store_uri,
)
from capexp.tracking.names import TAG_WINNER, OBJECTIVE_IMPORTANCE_PREFIX

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["RunRecord", "StudyParent", "load_runs", "load_study"]

_EPOCH_METRICS = frozenset(
    {"train_loss", "val_loss", "bertscore_precision", "bertscore_recall", "bertscore_f1"}
    | {f"bleu{n}" for n in range(1, 5)}
    | {"meteor", "rouge_l", "cider"}
)
# Params that are not hyperparameters: the run's name and description, where it copies outputs,
# and what the data decided (the cut vocabulary's size).
_NOT_HYPERPARAMS = frozenset(
    {"id", "notes", "training_config.trained_model_path", "training_config.monitoring_plots_path", PARAM_VOCABULARY_SIZE}
)
_PLOT_ORDER = {name: i for i, name in enumerate(STUDY_PLOTS)}


@dataclass
class RunRecord:
    """What the tables need from one MLflow run."""

    run_id: str
    name: str
    status: str  # FINISHED, RUNNING, FAILED, KILLED
    start_time: int
    end_time: int | None
    notes: str
    params: dict[str, Any]  # hyperparameters by dotted key, parsed from their JSON form
    metrics: dict[str, float]  # METRIC_ROWS-style values (per-epoch ones at the best epoch)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def pruned(self) -> bool:
        return self.tags.get(TAG_PRUNED) == "true"

    def value(self, key: str, default: Any = None) -> Any:
        """The param `key`; a section logged field by field (`training_config.scst.epochs`, ...) as a dict."""
        if key in self.params:
            return self.params[key]
        prefix = f"{key}."
        section = {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}
        return section or default


@dataclass
class StudyParent:
    """What the tables show from a study's parent run beside its trials."""

    run_id: str
    artifact_uri: str
    metric: str | None  # the objective, e.g. "cider"
    knobs: list[str]  # the searched dotted keys
    importances: dict[str, float]  # knob (dotted key) -> fANOVA importance, largest first
    plots: list[str]  # the Optuna plots' artifact paths, e.g. "plots/param_importances.png"
    direction: str | None = None  # "maximize" or "minimize"
    winner: str | None = None  # the finalists' winner: a trial number or "control"
    cost: dict[str, float] = field(default_factory=dict)  # worker_minutes, encode_minutes of its child runs
    # a study of several objectives: each further objective (train_minutes) -> knob -> importance
    other_importances: dict[str, dict[str, float]] = field(default_factory=dict)
    objectives: list[tuple[str, str]] = field(default_factory=list)  # (metric, direction) each; empty for one

    def cost_sentence(self) -> str:
        """What the study's runs cost, in one sentence ("" before the study has summarized them)."""
        if "worker_minutes" not in self.cost:
            return ""
        return (f"Its runs took {self.cost['worker_minutes']:.0f} worker-minutes (trials, control and finalists, every "
                f"attempt), {self.cost.get('encode_minutes', 0.0):.0f} of them encoding images into the feature cache.")


def _study_parent(client: MlflowClient, run: Run) -> StudyParent:
    importances = {k[len(IMPORTANCE_PREFIX):]: v for k, v in run.data.metrics.items() if k.startswith(IMPORTANCE_PREFIX)}
    others: dict[str, dict[str, float]] = {}
    for key, value in run.data.metrics.items():
        if key.startswith(OBJECTIVE_IMPORTANCE_PREFIX):
            metric, knob = key[len(OBJECTIVE_IMPORTANCE_PREFIX):].split("/", 1)
            others.setdefault(metric, {})[knob] = value
    return StudyParent(
        run_id=run.info.run_id,
        artifact_uri=run.info.artifact_uri,
        metric=run.data.params.get(PARAM_OBJECTIVE),
        knobs=[k[len(SPACE_PREFIX):] for k in run.data.params if k.startswith(SPACE_PREFIX)],
        importances=dict(sorted(importances.items(), key=lambda kv: -kv[1])),
        plots=sorted((f.path for f in client.list_artifacts(run.info.run_id, "plots") if f.path.endswith(".png")),
                     key=lambda p: _PLOT_ORDER.get(p.rsplit("/", 1)[-1].removesuffix(".png"), len(_PLOT_ORDER))),
        direction=run.data.params.get(PARAM_DIRECTION),
        winner=run.data.tags.get(TAG_WINNER),
        cost={k: run.data.metrics[k] for k in ("worker_minutes", "encode_minutes") if k in run.data.metrics},
        other_importances=others,
        objectives=objectives_of(run.data.params),
    )


def _parse_param(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _record(client: MlflowClient, run: Run, objective: tuple[str, str] | None = None) -> RunRecord:
    """Read one run: params parsed, per-epoch metrics taken at the best epoch (`best_epoch`
    when logged, else the epoch of lowest val_loss; the last one when neither is known).
    With a study's `objective` (metric, direction), also `objective`: the metric's best epoch
    value, as the study scored the trial."""
    run_id = run.info.run_id
    metrics = dict(run.data.metrics)
    histories = {k: client.get_metric_history(run_id, k) for k in metrics if k in _EPOCH_METRICS}
    if objective is not None and objective[0] in metrics:
        values = [m.value for m in histories.get(objective[0]) or client.get_metric_history(run_id, objective[0])]
        metrics["objective"] = (min if metric_mode(*objective) == "min" else max)(values)
    epoch = int(metrics["best_epoch"]) if "best_epoch" in metrics else None
    if histories:
        metrics["epochs"] = float(max(len(h) for h in histories.values()))
    if histories.get("val_loss"):
        lowest = min(histories["val_loss"], key=lambda m: (m.value, m.step))
        epoch = lowest.step if epoch is None else epoch
        metrics.setdefault("best_val_loss", lowest.value)
    if epoch is not None:
        metrics["best_epoch"] = float(epoch)
        for key, history in histories.items():
            at_epoch = [m.value for m in history if m.step == epoch]
            metrics[key] = at_epoch[-1] if at_epoch else metrics[key]
    return RunRecord(
        run_id=run_id,
        name=run.info.run_name or run_id,
        status=run.info.status,
        start_time=run.info.start_time or 0,
        end_time=run.info.end_time,
        notes=run.data.tags.get(TAG_NOTE, ""),
        params={k: _parse_param(v) for k, v in run.data.params.items() if k not in _NOT_HYPERPARAMS},
        metrics=metrics,
        tags=dict(run.data.tags),
    )


def load_runs(runs: Sequence[str] = (), *, experiment: str | None = None) -> list[RunRecord]:
    """The runs to compare: `runs` by name or id in the order given, else the ordinary runs
    (not studies' parents or trials) of `experiment` (default: capexp) in start order."""
    from mlflow import MlflowClient

    client = MlflowClient()
    if runs:
        found, missing = find_runs(runs, experiment)
        if missing:
            where = f"experiment {experiment!r}" if experiment else "any experiment"
            raise CapexpError(
                f"No run named or with id {', '.join(repr(m) for m in missing)} in {where} of the "
                f"store {store_uri()}. Check the names with `capexp compare --experiment NAME`, or "
                f"point --tracking-uri / MLFLOW_TRACKING_URI at the right store."
            )
        return [_record(client, found[name]) for name in dict.fromkeys(runs)]
    name = experiment or DEFAULT_EXPERIMENT
    ordinary = [
        r for r in runs_in(name)
        if TAG_PARENT not in r.data.tags and TAG_STUDY not in r.data.tags
    ]
    if not ordinary:
        raise CapexpError(
            f"Experiment {name!r} in the store {store_uri()} has no runs to compare. Run `capexp run "
            f"SPEC` first, or pick another experiment with --experiment or a study with --study."
        )
    return [_record(client, r) for r in ordinary]


def load_study(study: str, experiment: str | None = None) -> tuple[list[RunRecord], str | None, StudyParent | None]:
    """A study's trial runs (children of its parent run, tagged with its name) in start order,
    each with its `objective` when the parent names the metric; the study's direction; and
    its parent run (None if it was deleted)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    every = runs_in(experiment, tags={TAG_STUDY: study})
    trials = [r for r in every if TAG_PARENT in r.data.tags]
    if not trials:
        others = runs_in(experiment)
        studies = sorted({r.data.tags[TAG_STUDY] for r in others if TAG_STUDY in r.data.tags})
        raise CapexpError(
            f"No trial runs of study {study!r} in the store {store_uri()} (runs tagged "
            f"{TAG_STUDY}={study!r} with a parent run). Studies there: "
            f"{', '.join(studies) or 'none'}. Check the name given to `capexp study --name`."
        )
    parent = next((r for r in every if TAG_PARENT not in r.data.tags), None)
    params = parent.data.params if parent else {}
    metric, direction = params.get(PARAM_OBJECTIVE), params.get(PARAM_DIRECTION)
    objective = (metric, direction or "") if metric else None
    records = [_record(client, r, objective) for r in trials]
    return records, direction if metric else None, _study_parent(client, parent) if parent else None
