"""A study's runs in the MLflow store, found by their tags: its parent run, its trials' runs, and
ending a dead worker's run KILLED (with Optuna's FAIL state, so filtering by it finds the run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from capexp.tracking.names import STUDY_PARENT, TAG_OPTUNA_STATE, TAG_PARENT, TAG_STUDY, TAG_STUDY_ROLE

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["oldest_parent_run", "study_runs", "end_killed"]


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")


def oldest_parent_run(client: MlflowClient, exp_id: str, study: str) -> str | None:
    """The id of study `study`'s oldest parent run in experiment `exp_id` (None: it has none)."""
    query = f"tags.`{TAG_STUDY}` = '{_quoted(study)}' and tags.`{TAG_STUDY_ROLE}` = '{STUDY_PARENT}'"
    found = client.search_runs([exp_id], filter_string=query, max_results=1,
                               order_by=["attributes.start_time ASC", "attributes.run_id ASC"])
    return found[0].info.run_id if found else None


def study_runs(client: MlflowClient, experiment: str, study: str, *, parent: str | None = None,
               tags: dict[str, str] | None = None, status: str | None = None) -> list[Run]:
    """Every run of experiment `experiment` (by name) tagged with study `study` (and the child runs of
    `parent`, with each of `tags`, in `status` when given), oldest first; [] when the experiment is missing."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    where = {TAG_STUDY: study, **({TAG_PARENT: parent} if parent else {}), **(tags or {})}
    clauses = [f"tags.`{key}` = '{_quoted(value)}'" for key, value in where.items()]
    if status is not None:
        clauses.append(f"attributes.status = '{status}'")
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=" and ".join(clauses), max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def end_killed(client: MlflowClient, run_id: str) -> None:
    """End a run whose process died: KILLED, tagged with Optuna's FAIL state."""
    client.set_tag(run_id, TAG_OPTUNA_STATE, "FAIL")
    client.set_terminated(run_id, "KILLED")
