"""Runs' logged models (MLflow LoggedModel): each run's best checkpoint lives in one, as the
`checkpoint` artifact of a pyfunc model (capexp.serving.register logs it). Here: find a run's model, the
checkpoint folder inside a model, and drop a model's weights (`capexp study --keep-models`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from capexp.errors import CapexpError
from capexp.tracking.names import ARTIFACT_CHECKPOINT, CHECKPOINT_META, MODEL_NAME

if TYPE_CHECKING:
    from mlflow.entities import LoggedModel

__all__ = ["run_model", "model_checkpoint", "delete_model"]


def run_model(run_id: str, experiment_id: str | None = None) -> LoggedModel | None:
    """The newest ready capexp model (`captioner`) run `run_id` logged, or None (a run from before
    runs logged models, or one whose model was deleted)."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    client = MlflowClient()
    exp = experiment_id or client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(  # status is filtered here: the SQL store's `status` filter matches nothing
        experiment_ids=[exp],
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
    )
    return next((m for m in found if m.status == LoggedModelStatus.READY), None)


def _checkpoint_in(artifacts_uri: str) -> Path | None:
    """The local checkpoint folder under a model's artifact root (downloaded when the store is remote)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{artifacts_uri}/artifacts/{ARTIFACT_CHECKPOINT}"))
    except (MlflowException, OSError):
        return None
    return folder if (folder / CHECKPOINT_META).is_file() else None


def model_checkpoint(uri: str, origin: str) -> Path:
    """The checkpoint folder inside the model `uri` names: a logged model (`models:/m-...`) or a
    registered one (`models:/NAME@alias`, `models:/NAME/VERSION`). Read in place when the store is local."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = MlflowClient()
    try:
        parts = get_model_name_and_version(client, uri)  # (model id,) or (name, version)
        if len(parts) == 1:
            location = client.get_logged_model(parts[0]).artifact_location
        else:
            location = client.get_model_version_download_uri(*parts)
    except MlflowException as e:
        raise CapexpError(
            f"{origin}: {e.message.splitlines()[0]} Pass a logged model (`models:/m-...`, listed under "
            f"\"Logged models\" in `capexp ui`) or a registered one (`capexp register RUN --name NAME`), and "
            f"check the store (--tracking-uri)."
        ) from None
    folder = _checkpoint_in(location)
    if folder is None:
        raise CapexpError(
            f"{origin}: this model holds no capexp checkpoint (no artifacts/{ARTIFACT_CHECKPOINT}/{CHECKPOINT_META}); "
            f"it was not logged by capexp, or its weights were deleted (`capexp study --keep-models`)."
        )
    return folder


def delete_model(model: LoggedModel) -> None:
    """Delete a logged model and its artifacts (weights, code); the run keeps its metrics and curves."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(model.artifact_location).delete_artifacts()
    MlflowClient().delete_logged_model(model.model_id)
