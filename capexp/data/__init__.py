"""Data sources: every spec `data_paths.source` becomes train/val(/test) splits of images and captions.

`types` holds what every source produces (`ImageRef`, `Split`, `Splits`); `files` the loaders of
file-based sources; `generated` the offline shape images; `sources` the registry and `load_data`.
"""

from capexp.data.sources import SOURCES, check_inputs, load_data
from capexp.data.types import ImageRef, Split, Splits, dataset_frame

__all__ = ["ImageRef", "Split", "Splits", "SOURCES", "check_inputs", "load_data", "dataset_frame"]
