"""The one resolver of runs and models: a run id or name (the latest run of that name) to an MLflow run,
and any model source (run id or name, `models:/m-...`, `models:/NAME@alias`, checkpoint folder) to its
checkpoint folder (`resolve_model_source`; a run's checkpoint is in its logged model, or for runs from
before logged models its own `checkpoint` artifact). `capexp evaluate`, `caption`, `gallery`, `register`
and `training_config.init_from` take model sources; `capexp compare` and `score` take any run. Every run
query capexp makes (`search_runs`) lives here."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capexp.errors import CapexpError, warn
from capexp.tracking.logged_models import model_checkpoint, run_model
from capexp.tracking.names import ARTIFACT_CHECKPOINT, CHECKPOINT_META
from capexp.tracking.store import experiment_id, use_store

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "is_run_id", "store_uri", "experiment_ids", "search_runs", "runs_in", "has_checkpoint", "find_run", "find_runs",
    "tagged_run", "run_checkpoint", "experiment_runs", "ModelSource", "resolve_model_source", "model_sources",
]

log = logging.getLogger("capexp")

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def is_run_id(text: str) -> bool:
    return bool(_RUN_ID.match(text))


def store_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    """The named experiment's id, or every active experiment's when `experiment` is None."""
    if experiment is None:
        return [e.experiment_id for e in client.search_experiments()]
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise CapexpError(
            f"There is no MLflow experiment named {experiment!r} in the store {store_uri()}. "
            f"Experiments there: {names}. Pass one of them with --experiment, or point "
            f"--tracking-uri / MLFLOW_TRACKING_URI at the store that holds your runs."
        )
    return [exp.experiment_id]


def _quoted(value: str) -> str:
    return "'{}'".format(value.replace("'", "\\'"))


def search_runs(client: MlflowClient, ids: list[str], name: str | None = None, *, newest_first: bool = False,
                tags: dict[str, str] | None = None) -> list[Run]:
    """Every active run of the experiments `ids` (only those named `name`, and with each of `tags`, when
    given), by start time."""
    clauses = [f"attributes.run_name = {_quoted(name)}"] if name is not None else []
    clauses += [f"tags.`{key}` = {_quoted(value)}" for key, value in (tags or {}).items()]
    where = " AND ".join(clauses)
    order = "DESC" if newest_first else "ASC"
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(ids, filter_string=where, max_results=1000,
                                  order_by=[f"attributes.start_time {order}"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def tagged_run(experiment_id: str, tag: str, value: str) -> str | None:
    """The id of the oldest active run of experiment `experiment_id` whose tag `tag` is `value`, or None."""
    from mlflow import MlflowClient

    found = search_runs(MlflowClient(), [experiment_id], tags={tag: value})
    return found[0].info.run_id if found else None


def _by_id(client: MlflowClient, text: str) -> Run | None:
    from mlflow.exceptions import MlflowException

    if not is_run_id(text):
        return None
    try:
        return client.get_run(text)
    except MlflowException:
        return None  # not a run id of this store: try it as a run name


def _has_run_artifact_checkpoint(run_id: str) -> bool:
    """Whether the run keeps its checkpoint as its own `checkpoint` artifact (runs from before logged models)."""
    from mlflow import MlflowClient

    meta = f"{ARTIFACT_CHECKPOINT}/{CHECKPOINT_META}"
    return any(a.path == meta for a in MlflowClient().list_artifacts(run_id, ARTIFACT_CHECKPOINT))


def has_checkpoint(run_id: str) -> bool:
    """Whether the run has a best checkpoint: in its logged model, or (older runs) its own artifact."""
    return run_model(run_id) is not None or _has_run_artifact_checkpoint(run_id)


def find_run(source: str, experiment: str | None = None) -> str:
    """The id of the run `source` names: a run id, else the latest run of that name with a checkpoint."""
    from mlflow import MlflowClient

    client = MlflowClient()
    run = _by_id(client, source)
    if run is not None:
        return run.info.run_id
    where = f"experiment {experiment!r}" if experiment else "any experiment"
    if experiment:
        exp = experiment_id(experiment, create=False)
        if exp is None:
            raise CapexpError(f"experiment {experiment!r}: no such experiment in {store_uri()}.")
        ids = [exp]
    else:
        ids = experiment_ids(client, None)
    runs = search_runs(client, ids, source, newest_first=True)
    with_checkpoint = [r.info.run_id for r in runs if has_checkpoint(r.info.run_id)]
    if not with_checkpoint:
        found = f"{len(runs)} run(s) named {source!r} have no checkpoint" if runs else f"no run is named {source!r}"
        raise CapexpError(
            f"run {source!r}: {found} in {where} of {store_uri()}. Pass a run id or a run name "
            f"(see `capexp ui`), or point --tracking-uri at the store that holds it."
        )
    if len(with_checkpoint) > 1:
        log.info("%d runs are named %r; using the latest, %s", len(with_checkpoint), source, with_checkpoint[0])
    return with_checkpoint[0]


def find_runs(names: Iterable[str], experiment: str | None = None) -> tuple[dict[str, Run], list[str]]:
    """Match run names or run ids to runs: ({given name: run}, [names that match nothing]).

    Names are looked up in `experiment`, or in every experiment when it is None. A name
    that several runs share gives the latest of them, with a warning.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    ids = experiment_ids(client, experiment)
    found: dict[str, Run] = {}
    missing: list[str] = []
    for name in dict.fromkeys(names):
        run = _by_id(client, name)
        if run is not None and (experiment is None or run.info.experiment_id in ids):
            found[name] = run
            continue
        candidates = search_runs(client, ids, name, newest_first=True)
        if not candidates:
            missing.append(name)
            continue
        found[name] = candidates[0]
        if len(candidates) > 1:
            warn(
                f"{len(candidates)} runs are named {name!r}; using the latest "
                f"({candidates[0].info.run_id}). Pass a run id to pick another."
            )
    return found, missing


def run_checkpoint(run_id: str, origin: str) -> Path:
    """The local folder of run `run_id`'s best checkpoint (the store's own copy when local): the
    `checkpoint` artifact of its logged model, else (older runs) the run's own `checkpoint` artifact."""
    import mlflow

    model = run_model(run_id)
    if model is not None:
        return model_checkpoint(f"models:/{model.model_id}", origin)
    if not _has_run_artifact_checkpoint(run_id):
        raise CapexpError(
            f"{origin}: run {run_id} has no checkpoint (it ended before its first epoch finished, or a "
            f"study run with --keep-models dropped its model). Pick a run that finished at least one epoch "
            f"and still has a model under \"Logged models\" in `capexp ui`."
        )
    # a local store gives the artifact's own path; a remote one downloads to a temporary folder
    root = mlflow.get_run(run_id).info.artifact_uri
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/{ARTIFACT_CHECKPOINT}"))


def runs_in(experiment: str | None, *, tags: dict[str, str] | None = None) -> list[Run]:
    """Every active run of `experiment` (every experiment when None), with each of `tags` when given, by start time."""
    from mlflow import MlflowClient

    client = MlflowClient()
    return search_runs(client, experiment_ids(client, experiment), tags=tags)


def experiment_runs(experiment: str, *, tracking_uri: str | None = None) -> list[str]:
    """Ids of the runs in `experiment` that saved a checkpoint, oldest first."""
    from mlflow import MlflowClient

    use_store(tracking_uri)
    exp = experiment_id(experiment, create=False)
    if exp is None:
        raise CapexpError(f"experiment {experiment!r}: no such experiment in {store_uri()}.")
    runs = search_runs(MlflowClient(), [exp])
    ids = [r.info.run_id for r in runs if has_checkpoint(r.info.run_id)]
    if not ids:
        raise CapexpError(f"experiment {experiment!r}: none of its {len(runs)} runs saved a checkpoint.")
    return ids


@dataclass(frozen=True)
class ModelSource:
    """Where a model source's checkpoint is: its folder, how messages name the source, and the tracked run it
    is (None for a checkpoint folder or a `models:/` URI)."""

    folder: Path  # model.safetensors + capexp.json
    origin: str
    run_id: str | None = None

    def tracked_run(self, command: str) -> str:
        """The run id; a CapexpError when the source is no tracked run (`command` logs to one)."""
        if self.run_id is None:
            raise CapexpError(
                f"{self.origin}: {command} logs to the model's run, and a checkpoint folder or `models:/` URI names "
                f"none. Pass a run id or a run name (see `capexp ui`)."
            )
        return self.run_id


def resolve_model_source(source: str | Path, *, experiment: str | None = None,
                         tracking_uri: str | None = None) -> ModelSource:
    """The checkpoint of a checkpoint folder (or a folder holding `checkpoint/`), a logged model
    (`models:/m-...`), a registered one (`models:/NAME@alias`, `models:/NAME/VERSION`), a run id, or a run
    name (the latest with a checkpoint, in `experiment`, else in any)."""
    text = str(source)
    if Path(text).is_dir():
        folder = Path(text)
        folder = folder / "checkpoint" if (folder / "checkpoint").is_dir() else folder
        return ModelSource(folder, str(folder))
    use_store(tracking_uri)
    if text.startswith("models:/"):
        origin = f"--model {text}"
        return ModelSource(model_checkpoint(text, origin), origin)
    run_id = find_run(text, experiment)
    return ModelSource(run_checkpoint(run_id, text), f"run {text!r}", run_id)


def model_sources(sources: list[str], *, experiment: str | None = None, tracking_uri: str | None = None) -> list[str]:
    """`sources` as given (run ids or names, `models:/` URIs, folders); none given: every run with a
    checkpoint in `experiment`."""
    if not sources and experiment:
        return experiment_runs(experiment, tracking_uri=tracking_uri)
    return list(sources)
