"""The MLflow store: where runs live, the experiment they go in, how a spec value is written as a param, and
environment settings that MLflow and spawned workers read, set for a block."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from capexp.errors import CapexpError
from capexp.tracking.names import DEFAULT_EXPERIMENT, EXPERIMENT_KIND, TAG_EXPERIMENT_KIND

__all__ = ["resolve_tracking_uri", "artifact_root", "use_store", "experiment_id", "param_value", "environment", "no_download_bars"]


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri`, else $MLFLOW_TRACKING_URI, else a SQLite store in ./mlruns (set explicitly:
    MLflow 3 changed its default store)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = Path("mlruns").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store live beside it, under `artifacts/` (None: the store decides)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").as_uri()
    return None


def use_store(uri: str | None = None) -> str:
    """Point MLflow at the capexp store and return its URI."""
    import mlflow
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

    uri = resolve_tracking_uri(uri)
    if urlparse(uri).scheme in ("", "file") and not MLFLOW_ALLOW_FILE_STORE.get():
        raise CapexpError(
            f"The MLflow store {uri} (--tracking-uri or MLFLOW_TRACKING_URI) is a file store, which MLflow 3 "
            f"refuses unless asked. Use a database store such as sqlite:///mlruns/mlflow.db (`mlflow "
            f"migrate-filestore` moves the runs already there), or set MLFLOW_ALLOW_FILE_STORE=true to keep it."
        )
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str = DEFAULT_EXPERIMENT, *, create: bool = True) -> str | None:
    """The id of experiment `name` in the current store, created (beside the store) if missing.

    With `create` (capexp is about to log to it), the experiment is marked as model training
    (`mlflow.experimentKind`), so the MLflow UI opens it on its runs table and charts; an
    existing experiment without that tag gets it, one with another kind keeps its own.
    """
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        if create and TAG_EXPERIMENT_KIND not in exp.tags:
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return exp.experiment_id
    if not create:
        return None
    root = artifact_root(mlflow.get_tracking_uri())
    location = f"{root}/{name}" if root else None
    return mlflow.create_experiment(name, artifact_location=location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})


def param_value(value: Any) -> str:
    """How a spec value is written as an MLflow param: strings as-is, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` set in this process's environment (which MLflow, and a process spawned meanwhile, read), then
    restored."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def no_download_bars() -> contextlib.AbstractContextManager[None]:
    """MLflow's artifact download bars off inside the block (they would break a table being printed)."""
    return environment({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
