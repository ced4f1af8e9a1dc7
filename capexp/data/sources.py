"""The source registry: each spec `data_paths.source` names the loader that makes its `Splits`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from capexp.data.files import load_caption_list, load_coco, load_flickr8k, load_karpathy
from capexp.data.generated import load_generated
from capexp.data.types import Splits
from capexp.errors import CapexpError
from capexp.spec.loading import missing_paths

if TYPE_CHECKING:
    from capexp.spec.schema import Spec

__all__ = ["SOURCES", "check_inputs", "load_data"]

# `data_paths.source` -> loader of that spec section; a new source is one loader and one line here
SOURCES: dict[str, Callable[[Any], Splits]] = {
    "caption_list": load_caption_list,
    "coco": load_coco,
    "flickr8k": load_flickr8k,
    "karpathy": load_karpathy,
    "generated": load_generated,
}


def load_data(spec: Spec) -> Splits:
    """Load the spec's data source; `training_config.subset_ratio` samples train only (val stays fixed)."""
    splits = SOURCES[spec.data_paths.source](spec.data_paths)
    splits.train = splits.train.subset(spec.training_config.subset_ratio, spec.seed)
    return splits


def check_inputs(spec: Spec, origin: str) -> None:
    """Fail (naming `origin`, the spec's file) when a data file or folder the spec names is missing."""
    missing = missing_paths(spec)
    if missing:
        named = "; ".join(f"`{key}` = {path}" for key, path in missing)
        raise CapexpError(
            f"{origin}: data not found: {named}. Fix the path in the spec, or override it with "
            f"--set (for example --set data_paths.root=/path/to/flickr8k), or set CAPEXP_DATA."
        )
