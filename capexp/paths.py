"""Where capexp keeps files on disk: the cache root shared by features, decoders and tokenizers."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """$CAPEXP_CACHE, else ~/.cache/capexp."""
    return Path(os.environ.get("CAPEXP_CACHE") or "~/.cache/capexp").expanduser()
