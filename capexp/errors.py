"""User-facing errors and warnings: one paragraph naming the file, the field and the fix."""

from __future__ import annotations

import logging

__all__ = ["CapexpError", "TrainingDiverged", "warn"]

logger = logging.getLogger("capexp")


class CapexpError(Exception):
    """An error the user can fix; the CLI prints its message and exits with code 2."""


class TrainingDiverged(CapexpError):
    """The training loss became NaN or infinite: these settings diverge (a study fails just that trial)."""


def warn(message: str) -> None:
    """Emit a user-facing warning through capexp's logger (console and log file)."""
    logger.warning(message)
