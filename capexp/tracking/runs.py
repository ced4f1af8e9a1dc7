"""The one run resolver: a run id or name (the latest run of that name) to an MLflow run, and a
run to its checkpoint folder (in the run's logged model; runs from before logged models keep it
as their own `checkpoint` artifact). `capexp evaluate`, `caption` and `register` need a run with
a checkpoint; `capexp compare` and `score` take any run."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
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
    "is_run_id", "store_uri", "experiment_ids", "search_runs", "has_checkpoint",
    "find_run", "find_runs", "run_checkpoint", "experiment_runs",
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


def search_runs(client: MlflowClient, ids: list[str], name: str | None = None, *, newest_first: bool = False) -> list[Run]:
    """Every active run of the experiments `ids` (only those named `name` when given), by start time."""
    where = "attributes.run_name = '{}'".format(name.replace("'", "\\'")) if name is not None else ""
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
