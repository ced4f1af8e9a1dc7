"""The data every source produces: images (`ImageRef`), each with all its reference captions (`Split`).

An image is an `ImageRef`: a name users see, a content key for the feature cache, and a way to
load its pixels (a file, or a renderer for generated images). A `Split` pairs images with all
their reference captions.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from capexp.data.digests import file_keys
from capexp.data.images import read_image

if TYPE_CHECKING:
    import pandas

__all__ = ["ImageRef", "Split", "Splits", "dataset_frame"]


@dataclass(frozen=True)
class ImageRef:
    """One image: its shown name, its feature-cache key and where its pixels come from."""

    image_id: str  # what users see: the file name
    key: str  # content identity: the file's digest (a generated image: its recipe)
    path: Path | None = None  # the file, or None for generated images
    render: Callable[[], Image.Image] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_file(cls, path: Path, image_id: str | None = None, key: str | None = None) -> ImageRef:
        """The image file at `path` (made absolute), keyed by its content (`capexp.data.digests`; give `key`
        when it is known already); OSError if there is no such file."""
        path = Path(os.path.abspath(path))
        if key is None:
            (key,) = file_keys([path])
        if key is None:
            raise FileNotFoundError(f"{path} is not a file")
        return cls(image_id or path.name, key, path)

    def load(self) -> Image.Image:
        """The image as RGB, through the pixel cap (`capexp.data.images.read_image`); raises
        `UnreadableImage` (a ValueError) when the file is missing, corrupt, not an image or too large."""
        if self.render is not None:
            return self.render().convert("RGB")
        if self.path is None:
            raise ValueError(f"ImageRef {self.image_id!r} has neither a path nor a renderer")
        return read_image(self.path)


@dataclass
class Split:
    """Images and, for each, all its reference captions (stripped, non-empty)."""

    images: list[ImageRef]
    captions: list[list[str]]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.captions):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} caption lists")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, ratio: float, seed: int) -> Split:
        """A reproducible sample of `ratio` of the images (at least one), in their original order."""
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        if ratio == 1.0 or not self.images:
            return self
        n = min(len(self), max(1, round(ratio * len(self))))
        keep = sorted(random.Random(seed).sample(range(len(self)), n))
        return Split([self.images[i] for i in keep], [self.captions[i] for i in keep])

    def drop(self, indices: set[int]) -> Split:
        """The split without the images at `indices` (for example, unreadable ones)."""
        keep = [i for i in range(len(self)) if i not in indices]
        return Split([self.images[i] for i in keep], [self.captions[i] for i in keep])


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split | None = None


def dataset_frame(split: Split) -> pandas.DataFrame:
    """One row per reference caption, columns `image_id, caption` (for MLflow's `log_input`)."""
    import pandas

    rows = [(ref.image_id, c) for ref, caps in zip(split.images, split.captions) for c in caps]
    return pandas.DataFrame(rows, columns=["image_id", "caption"])
