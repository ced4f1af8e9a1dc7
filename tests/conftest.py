"""Shared fixtures: the real data beside the repo, an isolated MLflow store and feature cache."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (or $CAPEXP_DATA): Flickr8k, the COCO sample and the seed's scores."""
    root = Path(os.environ.get("CAPEXP_DATA", REPO.parent / "shared" / "data"))
    if not (root / "flickr8k").is_dir():
        pytest.fail(f"real data not found at {root}; set CAPEXP_DATA to the shared data folder")
    return root


@pytest.fixture(scope="session")
def _migrated_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One empty, migrated MLflow SQLite database (migrations cost seconds; copying it costs nothing)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _migrated_store: Path) -> str:
    """A fresh SQLite MLflow store under tmp_path, also exported as MLFLOW_TRACKING_URI."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(_migrated_store, tmp_path / "mlruns" / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test session gets its own feature cache, never the user's."""
    monkeypatch.setenv("CAPEXP_CACHE", str(tmp_path_factory.getbasetemp() / "capexp-cache"))


@pytest.fixture(scope="session")
def quickstart_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable:
    """`with quickstart_runs(names, overrides, env) as (uri, ids)`: one tiny quickstart run per name
    (the i-th with seed i, `overrides` as --set values, `env` set meanwhile) in a fresh SQLite store."""

    @contextlib.contextmanager
    def make(names: list[str], overrides: list[str], env: dict[str, str | None] | None = None) -> Iterator[tuple[str, list[str]]]:
        from capexp.run import run_spec
        from capexp.spec import load_spec

        uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            mp.setenv("CAPEXP_CACHE", str(tmp_path_factory.getbasetemp() / "capexp-cache"))
            for key, value in (env or {}).items():
                mp.delenv(key, raising=False) if value is None else mp.setenv(key, value)
            ids = [run_spec(load_spec(REPO / "experiments" / "quickstart.json", [*overrides, f'id="{name}"', f"seed={i}"])).run_id
                   for i, name in enumerate(names)]
            yield uri, ids

    return make
