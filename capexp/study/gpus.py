"""`capexp study --workers N --gpus 0,2`: which GPU each worker process sees.

With G GPUs chosen (default: every GPU this process sees), worker i sees only the (i mod G)-th,
through `CUDA_VISIBLE_DEVICES` in the environment it is spawned with. GPUs are numbered as this
process sees them: where `CUDA_VISIBLE_DEVICES` is already set, `--gpus 0` is the first GPU it
lists. Without a GPU nothing changes.
"""

from __future__ import annotations

import os
import re

from capexp.errors import CapexpError

__all__ = ["device_count", "visible_gpus", "choose_gpus", "worker_env"]

def device_count() -> int:
    """How many CUDA GPUs this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def visible_gpus() -> list[str]:
    """The GPUs this process sees, as a child's `CUDA_VISIBLE_DEVICES` names them: "0", "1", ...,
    or the ids this process's own `CUDA_VISIBLE_DEVICES` lists."""
    count = device_count()
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def choose_gpus(option: str | None) -> tuple[str, ...]:
    """The GPUs `--gpus` names (None: every visible one; none on a machine without GPUs), as
    `CUDA_VISIBLE_DEVICES` values; CapexpError for a GPU that does not exist."""
    visible = visible_gpus()
    if option is None:
        return tuple(visible)
    if not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", option):
        raise CapexpError(f"--gpus {option!r}: give GPU numbers separated by commas, such as 0,2.")
    asked = list(dict.fromkeys(int(g) for g in option.split(",")))
    missing = [g for g in asked if g >= len(visible)]
    if missing:
        seen = f"{len(visible)} GPU(s), numbered 0 to {len(visible) - 1}" if visible else "no GPU"
        raise CapexpError(
            f"--gpus {option}: GPU {', '.join(map(str, missing))} does not exist; this machine shows {seen}. "
            f"Name GPUs it has, or leave --gpus out."
        )
    return tuple(visible[g] for g in asked)


def worker_env(index: int, gpus: tuple[str, ...] | list[str]) -> dict[str, str]:
    """The environment worker `index` is spawned with: the one GPU it sees (nothing without GPUs)."""
    return {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)]} if gpus else {}
