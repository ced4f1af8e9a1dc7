"""Optuna storage: a journal file (one machine) or a database (several), and reading trials back from it."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from capexp.errors import CapexpError, warn

MAX_RETRY = 3  # a trial whose worker died or was interrupted is retried this often


@contextlib.contextmanager
def quiet_experimental() -> Iterator[None]:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _masked(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _journal_path(storage: str | None, name: str) -> Path | None:
    if storage is not None and "://" in storage:
        return None
    return Path(storage) if storage else Path("studies") / f"{name}.journal"


def open_storage(storage: str | None, name: str, heartbeat_interval: int = 60, on_stale: Callable[[Any, Any], None] | None = None):
    """Optuna storage: None -> `studies/<name>.journal`; a path -> a journal file there (any
    number of processes on one machine); a database URL -> RDBStorage with heartbeats, so a
    trial whose worker died is failed and handed to `on_stale(study, trial)` (default: queued
    again), for PostgreSQL and workers on several machines."""
    import sqlalchemy.exc
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    path = _journal_path(storage, name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    assert storage is not None
    if storage.startswith("sqlite"):
        warn(f"--storage {storage}: SQLite is not safe for several workers; prefer the default journal file or PostgreSQL.")
    try:
        with quiet_experimental():
            return RDBStorage(
                storage, engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat_interval, grace_period=2 * heartbeat_interval,
                heartbeat_stale_trial_callback=on_stale or RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
    except ImportError as e:  # Optuna wraps the driver's ModuleNotFoundError
        missing = getattr(e.__cause__, "name", None) or getattr(e, "name", None) or "?"
        raise CapexpError(
            f"--storage {_masked(storage)} needs the database driver `{missing}`, which is not installed. "
            f"For postgresql:// URLs run `pip install 'psycopg[binary]'`."
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CapexpError(
            f"--storage {_masked(storage)}: cannot open the study database ({first}). Check the URL "
            f"(postgresql://USER:PASSWORD@HOST:PORT/DB), that the server runs and that the database exists."
        ) from None


def existing_storage(storage: str | None, name: str):
    """The storage of study `name`, which must exist already (as `open_storage` takes `storage`)."""
    import optuna

    path = _journal_path(storage, name)
    if path is not None and not path.is_file():
        raise CapexpError(f"There is no study journal {path}. Check the study name, or pass --storage as `capexp study` had it.")
    opened = open_storage(storage, name)
    if name not in optuna.get_all_study_names(opened):
        raise CapexpError(f"{storage_label(storage, name)} holds no study {name!r}. Check the name (or --storage).")
    return opened


def storage_label(storage: str | None, name: str) -> str:
    path = _journal_path(storage, name)
    return str(path.resolve()) if path is not None else _masked(storage or "")


def trial_id(storage, name: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(name), number)


def frozen(storage, name: str, number: int):
    """Trial `number` of study `name` as stored now."""
    return storage.get_trial(trial_id(storage, name, number))


def trial_counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {s.name: states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                             TrialState.RUNNING, TrialState.WAITING)}


def grid_points_run(study) -> int:
    """How many grid points have a finished trial (complete, pruned or failed)."""
    return len({t.system_attrs["grid_id"] for t in study.get_trials(deepcopy=False)
                if t.state.is_finished() and "grid_id" in t.system_attrs})
