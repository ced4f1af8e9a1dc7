"""Where capexp finds files on disk: the cache root (features, decoders, tokenizers) and the project's
own `experiments/` and `studies/` files."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root", "project_file"]


def cache_root() -> Path:
    """$CAPEXP_CACHE, else ~/.cache/capexp."""
    return Path(os.environ.get("CAPEXP_CACHE") or "~/.cache/capexp").expanduser()


def project_file(*parts: str) -> Path:
    """A file of the project's checkout (`experiments/quickstart.json`, `studies/default.json`): beside
    the package in an editable install, else under the current directory (a wheel has no checkout)."""
    checkout = Path(__file__).resolve().parents[1].joinpath(*parts)
    return checkout if checkout.exists() else Path.cwd().joinpath(*parts)
