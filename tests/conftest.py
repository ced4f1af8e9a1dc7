"""Shared fixtures: the tiny quickstart (`tiny`), photo files made here, the optional real data, an isolated
MLflow store and feature cache, and a throwaway PostgreSQL server.

The suite needs nothing outside the repository. Tests that need real photos or Flickr8k take the
`shared_data` fixture: they skip with one line naming `CAPEXP_DATA` when the data is absent, and
fail instead under `CI=true` (or `CAPEXP_REQUIRE_DATA=1`), so CI never skips them silently.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from capexp.spec.schema import Spec
    from capexp.training.run import RunResult

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.json"


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


# The quickstart cut to seconds: one epoch of one optimizer step, four validation images, no Java metrics.
TINY = ("training_config.num_epochs=1", "data_paths.num_train=8", "data_paths.num_val=4",
        "training_config.batch_size=8", "training_config.warmup_steps=0", "evaluation.coco_metrics=false",
        "evaluation.max_images=4", "evaluation.batch_size=8")


@dataclass(frozen=True)
class Tiny:
    """The tiny quickstart as `--set` values; each use adds only what differs (later values win)."""

    base: Path = QUICKSTART
    overrides: tuple[str, ...] = TINY

    def sets(self, *changes: str) -> list[str]:
        """The overrides, then `changes`: `tiny.sets("training_config.num_epochs=3")`."""
        return [*self.overrides, *changes]

    def args(self, *changes: str) -> list[str]:
        """The same as command-line options: `--set A --set B ...`."""
        return [a for value in self.sets(*changes) for a in ("--set", value)]

    def spec(self, *changes: str) -> Spec:
        from capexp.spec.loading import load_spec

        return load_spec(self.base, self.sets(*changes))

    def run(self, *changes: str, **kwargs) -> RunResult:
        """Train it: `run_spec` of the spec with `changes` (`kwargs` go to `run_spec`)."""
        from capexp.training.run import run_spec

        return run_spec(self.spec(*changes), **kwargs)


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    """The quickstart cut to seconds (`TINY`): `tiny.sets(...)`, `tiny.args(...)`, `tiny.spec(...)`, `tiny.run(...)`."""
    return Tiny()


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
def shared_store(tmp_path_factory: pytest.TempPathFactory, _migrated_store: Path) -> Callable:
    """`with shared_store(env) as uri`: a fresh SQLite store for runs that a module's tests share, exported as
    MLFLOW_TRACKING_URI with the session's feature cache (and `env`: None unsets) meanwhile."""

    @contextlib.contextmanager
    def make(env: dict[str, str | None] | None = None) -> Iterator[str]:
        folder = tmp_path_factory.mktemp("store")
        shutil.copy(_migrated_store, folder / "mlflow.db")
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            mp.setenv("CAPEXP_CACHE", str(tmp_path_factory.getbasetemp() / "capexp-cache"))
            for key, value in (env or {}).items():
                mp.delenv(key, raising=False) if value is None else mp.setenv(key, value)
            yield uri

    return make


@pytest.fixture(scope="session")
def quickstart_runs(shared_store: Callable, tiny: Tiny) -> Callable:
    """`with quickstart_runs(names, *changes, env=...) as (uri, ids)`: one tiny quickstart run per name
    (the i-th with seed i, `changes` to the tiny spec) in a `shared_store(env)`."""

    @contextlib.contextmanager
    def make(names: list[str], *changes: str, env: dict[str, str | None] | None = None) -> Iterator[tuple[str, list[str]]]:
        with shared_store(env) as uri:
            yield uri, [tiny.run(*changes, f'id="{name}"', f"seed={i}").run_id for i, name in enumerate(names)]

    return make


# ---------------------------------------------------------------------------- a real PostgreSQL server
def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres_user(root: Path) -> list[str]:
    """The prefix that runs a command as `postgres` when we are root (the server refuses root), else none."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root and there is no `postgres` user to run the server as; run .ci/postgres.sh")
    shutil.chown(root, "postgres")
    runuser = shutil.which("runuser") or shutil.which("runuser", path="/usr/sbin:/sbin")  # sbin may be off PATH
    return [runuser or "runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Callable[[str], str]]:
    """A throwaway PostgreSQL cluster on a free localhost port; `postgres(name)` creates database `name`
    there and returns its URL. Skips when the server binaries are missing (.ci/postgres.sh installs them)."""
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; run .ci/postgres.sh")
    root = Path(tempfile.mkdtemp(prefix="capexp-pg-"))
    as_user = _as_postgres_user(root)
    data, port = root / "data", _free_port()

    def run(cmd: list) -> None:
        done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}\n{log}"

    def database(name: str) -> str:
        run([bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "capexp", name])
        return f"postgresql://capexp@127.0.0.1:{port}/{name}"

    run([*as_user, bindir / "initdb", "-D", data, "-U", "capexp", "--auth=trust", "-E", "UTF8"])
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run([*as_user, bindir / "pg_ctl", "-D", data, "-l", root / "server.log", "-o", options, "-w", "start"])
    try:
        yield database
    finally:
        run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)
