"""Content keys of image files for the feature cache: the same bytes get the same key wherever the file
lies and whatever its modification time, so a dataset copied, re-extracted or moved keeps its cached
features, and an edited image gets new ones.

A file's digest is remembered with its size and modification time in `image-digests.sqlite` under the
cache root (one row per path), so a file that has not changed is not read again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import stat
from collections.abc import Sequence
from pathlib import Path

from capexp.paths import cache_root

__all__ = ["file_keys"]

log = logging.getLogger("capexp")

_CHUNK = 500  # SQLite's limit on bound parameters is 999 in old builds


def _digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # hashlib.file_digest needs Python 3.11
            digest.update(block)
    return "blake2b:" + digest.hexdigest()


def file_keys(paths: Sequence[Path]) -> list[str | None]:
    """Each file's content key (made absolute first); None where there is no such regular file."""
    stats: list[tuple[str, int, int] | None] = []  # (absolute path, size, mtime)
    for path in paths:
        path = os.path.abspath(path)
        try:
            st = os.stat(path)
        except OSError:
            stats.append(None)
            continue
        stats.append((path, st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None)
    wanted = {s for s in stats if s is not None}
    known = {s: digest for s, digest in _remembered(sorted({s[0] for s in wanted})).items() if s in wanted}
    fresh = {}
    for s in sorted(wanted - set(known)):
        try:
            fresh[s] = _digest(s[0])
        except OSError:  # gone or unreadable since the stat: left out like a missing file
            continue
    if fresh:
        _remember(fresh)
    known |= fresh
    return [known.get(s) if s is not None else None for s in stats]


def _connect() -> sqlite3.Connection:
    folder = cache_root()
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / "image-digests.sqlite", timeout=60)
    db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, digest TEXT)")
    return db


def _remembered(paths: list[str]) -> dict[tuple[str, int, int], str]:
    """(path, size, mtime) -> digest, as last seen, for those of `paths` seen before."""
    if not paths:
        return {}
    try:
        with contextlib.closing(_connect()) as db:
            found = {}
            for start in range(0, len(paths), _CHUNK):
                chunk = paths[start : start + _CHUNK]
                query = f"SELECT path, size, mtime_ns, digest FROM digests WHERE path IN ({','.join('?' * len(chunk))})"
                found.update({(path, size, mtime): digest for path, size, mtime, digest in db.execute(query, chunk)})
            return found
    except (sqlite3.Error, OSError) as e:  # a read-only or odd cache folder: every file is read instead
        log.debug("image digests not remembered (%s)", e)
        return {}


def _remember(digests: dict[tuple[str, int, int], str]) -> None:
    try:
        with contextlib.closing(_connect()) as db, db:  # one transaction, committed
            db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)", [(*s, d) for s, d in digests.items()])
    except (sqlite3.Error, OSError) as e:
        log.debug("image digests not remembered (%s)", e)
