"""The source registry: each spec `data_paths.source` names the loader that makes its `Splits`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from capexp.datasets.files import load_caption_list, load_coco, load_flickr8k, load_karpathy
from capexp.datasets.generated import load_generated
from capexp.datasets.types import Splits

if TYPE_CHECKING:
    from capexp.spec import Spec

__all__ = ["SOURCES", "load_data"]

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
