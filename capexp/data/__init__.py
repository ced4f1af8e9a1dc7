"""Data sources: every spec `data_paths.source` becomes train/val(/test) splits of images and captions.

It owns what every source produces (`ImageRef`, `Split`, `Splits`), the file-based sources' loaders,
the offline shape images, fetching Flickr8k, reading images, and the registry behind `load_data`.
"""

from capexp.data.sources import SOURCES, check_inputs, load_data
from capexp.data.types import ImageRef, Split, Splits, dataset_frame

__all__ = ["ImageRef", "Split", "Splits", "SOURCES", "check_inputs", "load_data", "dataset_frame"]
