"""Shared fixtures: photo files made here, the optional real data, an isolated MLflow store and feature cache.

The suite needs nothing outside the repository. Tests that need real photos or Flickr8k take the
`shared_data` fixture: they skip with one line naming `CAPEXP_DATA` when the data is absent, and
fail instead under `CI=true` (or `CAPEXP_REQUIRE_DATA=1`), so CI never skips them silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _require_data() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("CAPEXP_REQUIRE_DATA") == "1"


def _real_data(folder: str) -> Path:
    """$CAPEXP_DATA (else `../shared/data`) when it holds `folder`; otherwise skip, or fail under CI."""
    root = Path(os.environ.get("CAPEXP_DATA") or REPO.parent / "shared" / "data")
    if not (root / folder).is_dir():
        reason = (f"real data: no {folder}/ in {root}; set CAPEXP_DATA to the folder holding it "
                  f"(`capexp data flickr8k --to DIR` fetches Flickr8k)")
        if _require_data():
            pytest.fail(f"{reason}. CI=true or CAPEXP_REQUIRE_DATA=1 requires the real data.")
        pytest.skip(reason)
    return root


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's torch takes its share of the cores (as `capexp study` workers do), so
    the workers do not oversubscribe the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder ($CAPEXP_DATA, else `../shared/data`) holding Flickr8k."""
    return _real_data("flickr8k")


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    """The real COCO val2017 caption file with a partial image folder (`coco2017_sample/` of the real data)."""
    return _real_data("coco2017_sample") / "coco2017_sample"


@pytest.fixture(scope="session")
def make_photos() -> Callable[..., list[tuple[Path, list[str]]]]:
    """`make_photos(folder, n, px=96)`: n JPEG photos of generated shape scenes, with their five captions."""
    from capexp.data import load_data
    from capexp.spec.schema import GeneratedData, Spec

    def make(folder: Path, n: int, px: int = 96, suffix: str = ".jpg") -> list[tuple[Path, list[str]]]:
        data = GeneratedData(source="generated", num_train=n, num_val=1, image_px=px, seed=7)
        train = load_data(Spec(data_paths=data)).train
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for i, (ref, captions) in enumerate(zip(train.images, train.captions)):
            path = folder / f"{1000 + i}_shapes{suffix}"
            ref.load().save(path, quality=92)
            out.append((path, captions))
        return out

    return make


@pytest.fixture(scope="session")
def tiny_flickr8k(tmp_path_factory: pytest.TempPathFactory, make_photos) -> Path:
    """A Flickr8k-layout folder of 18 generated photos: 12 train / 3 dev / 3 test, five captions each."""
    root = tmp_path_factory.mktemp("data") / "flickr8k"
    photos = make_photos(root / "Flicker8k_Dataset", 18)
    text = root / "Flickr8k_text"
    text.mkdir()
    tokens = [f"{p.name}#{k}\t{c}" for p, caps in photos for k, c in enumerate(caps)]
    (text / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n")
    for part, names in (("train", photos[:12]), ("dev", photos[12:15]), ("test", photos[15:])):
        (text / f"Flickr_8k.{part}Images.txt").write_text("".join(f"{p.name}\n" for p, _ in names))
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
        from capexp.training.run import run_spec
        from capexp.spec.loading import load_spec

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
