"""Stopping a command from outside: SIGTERM and SIGHUP end it as Ctrl-C does, and only once.

`timeout`, `docker stop`, Slurm and systemd stop a process with SIGTERM; closing its terminal
sends SIGHUP. Inside `stop_on_signals()`, the first SIGINT, SIGTERM or SIGHUP raises `Stopped`
(a `KeyboardInterrupt`, so every Ctrl-C path applies: a run ends KILLED with what it logged, a
study trial is queued again); later signals are ignored with a warning, so that cleanup
finishes. The command then exits with 128 + the signal's number: 130, 143 or 129.

Python drops an exception raised inside a finaliser or a weakref callback, and a signal can land
there; the training loops call `raise_if_stopped()` at each step, so such a stop still ends the run
at its next step instead of being lost. Where Python wraps it in another error instead, `stopped_by`
finds it, so the run still ends KILLED.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["SIGNALS", "Stopped", "exit_code", "raise_if_stopped", "stop_on_signals", "stoppable", "stopped_by"]

log = logging.getLogger("capexp")

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_state: dict[str, int] = {"depth": 0, "stopping": 0}  # stopping: the signal asked to stop, 0 if none

F = TypeVar("F", bound=Callable[..., Any])


class Stopped(KeyboardInterrupt):
    """The command was asked to stop by signal `signum`."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal that stopped the command (a plain KeyboardInterrupt is Ctrl-C: 130)."""
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))


def _handle(signum: int, frame: object) -> None:
    if _state["stopping"]:
        log.warning("%s ignored: already stopping, ending what runs cleanly (SIGKILL stops at once).",
                    signal.Signals(signum).name)
        return
    _state["stopping"] = signum
    raise Stopped(signum)


def stopped_by(error: BaseException) -> KeyboardInterrupt | None:
    """The interrupt behind `error`: itself, or one it was raised from or while handling (Python 3.11
    wraps an exception raised inside `__set_name__`, where a signal can land during an import, in a
    RuntimeError); None when no stop is behind it."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def raise_if_stopped() -> None:
    """Raise `Stopped` if a signal asked to stop (inside `stop_on_signals()`): for loops that must not
    run on when the first `Stopped` was dropped (raised inside a finaliser, say)."""
    if _state["stopping"]:
        raise Stopped(_state["stopping"])


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGINT, SIGTERM and SIGHUP raise `Stopped` once (main thread only; elsewhere a no-op).

    Nested uses share one state: a signal ignored inside stays ignored until the outermost ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            _state["stopping"] = 0
            for s, handler in previous.items():
                signal.signal(s, handler)


def stoppable(function: F) -> F:
    """`function` run inside `stop_on_signals()`."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with stop_on_signals():
            return function(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
