"""Captions for a folder of images (`capexp caption`) from any models: each source (run id, run name,
checkpoint folder, `models:/m-...`, `models:/NAME@alias`) becomes a `capexp.model.checkpoint.Checkpoint`.
`caption_folder` encodes the images once per distinct encoder through the feature cache, so models that
share an encoder share its features, loads one model at a time (or, for an ensemble, its members together),
and writes the seed's CSV: `image_id, model_name, caption`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capexp.errors import CapexpError

if TYPE_CHECKING:
    import torch

    from capexp.model.checkpoint import Checkpoint

__all__ = [
    "FolderCaptions", "select_checkpoints", "list_images", "image_refs", "unique_names", "ImageCaptions",
    "caption_refs", "caption_folder",
]

@dataclass
class FolderCaptions:
    """What `caption_folder` wrote."""

    output: Path
    images: int  # images captioned
    models: list[str]  # model_name of each captioner, in CSV order
    skipped: list[tuple[str, str]]  # (file name, reason) of unreadable files
    seconds: float


def select_checkpoints(sources: list[str], *, experiment: str | None = None,
                       tracking_uri: str | None = None) -> list[Checkpoint]:
    """The checkpoints of `capexp.tracking.model_sources(sources, ...)`."""
    from capexp.model.checkpoint import find_checkpoint
    from capexp.tracking import model_sources

    sources = model_sources(sources, experiment=experiment, tracking_uri=tracking_uri)
    if not sources:
        raise CapexpError("capexp caption needs models: give --run ID, --model URI, or --experiment NAME.")
    return [find_checkpoint(s, experiment=experiment, tracking_uri=tracking_uri) for s in sources]


def list_images(images_dir: Path) -> list[Path]:
    """Files in `images_dir` (not below) with an extension Pillow can open, sorted by name."""
    from PIL import Image

    if not images_dir.is_dir():
        raise CapexpError(f"{images_dir} is not a folder. Pass the folder that holds the images to caption.")
    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    files = sorted(p for p in images_dir.iterdir()
                   if p.suffix.lower() in readable and not p.name.startswith(".") and p.is_file())
    if not files:
        raise CapexpError(f"{images_dir} holds no image files (looked for {', '.join(sorted(readable)[:8])}, ...).")
    return files


def image_refs(files: list[Path]) -> list[Any]:
    from capexp.data import ImageRef
    from capexp.data.digests import file_keys

    return [ImageRef.from_file(path.resolve(), path.name, key) for path, key in zip(files, file_keys(files)) if key is not None]


def unique_names(checkpoints: list[Checkpoint]) -> list[str]:
    """Run names, with `#2`, `#3`... added where two checkpoints share one."""
    names = [c.name for c in checkpoints]
    out = []
    for i, name in enumerate(names):
        out.append(name if names.count(name) == 1 else f"{name}#{names[:i].count(name) + 1}")
    return out


@dataclass
class ImageCaptions:
    """What `caption_refs` made: the images it could read and every model's caption of each."""

    images: list[Any]  # the ImageRefs captioned, in the order given
    models: list[str]  # model_name of each captioner (run names, `#2`... where two share one)
    captions: list[list[str]]  # per model, one caption per image in `images`
    skipped: list[tuple[str, str]]  # (image_id, reason) of unreadable images


def caption_refs(
    refs: list[Any],
    checkpoints: list[Checkpoint],
    *,
    beam: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
    ensemble: bool = False,
) -> ImageCaptions:
    """Caption images (`capexp.data.ImageRef`s) with every checkpoint.

    Each distinct encoder (`card.cache_id`) runs once over the images through the feature cache,
    so a second call (say, with a newly trained run) encodes nothing; models are loaded one at a
    time. With `ensemble`, the checkpoints decode as one model instead (`check_ensemble`; its
    model_name joins theirs with "+"), all loaded at once. Images that cannot be read are skipped
    (encode_images warns once). `beam` None: each run's own `evaluation.beam_size` (an
    ensemble's: the first run's). `device` None: CUDA when available, else CPU.
    """
    from capexp.model.captioner import default_device
    from capexp.model.checkpoint import check_ensemble

    if not checkpoints:
        raise CapexpError("no model to caption with: pass --run, --experiment or --model.")
    if ensemble:
        check_ensemble(checkpoints)
    dev = default_device(device)
    names = unique_names(checkpoints)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(checkpoints):
        groups.setdefault(c.card.cache_id, []).append(i)
    todo, encoded, skipped = _encode_per_encoder(checkpoints, groups, refs, dev, batch_size)
    if ensemble:
        (features,) = encoded.values()
        captions = [_caption_as_ensemble(checkpoints, features, dev, beam, batch_size)]
        names = ["+".join(names)]
    else:
        captions = _caption_per_model(checkpoints, groups, encoded, names, len(todo), dev, beam, batch_size)
    return ImageCaptions([refs[i] for i in todo], names, captions, skipped)


def caption_folder(
    images_dir: Path,
    checkpoints: list[Checkpoint],
    output_csv: Path,
    *,
    beam: int | None = None,
    batch_size: int = 32,
    device: str | None = None,
    ensemble: bool = False,
) -> FolderCaptions:
    """Caption every image in `images_dir` with every checkpoint (`ensemble`: with all of them as one model);
    write `image_id, model_name, caption`.

    Rows are grouped by image (sorted file names), then by model in the given order; the
    captions come from `caption_refs` (one encoding per encoder, through the feature cache).
    Files that cannot be read are skipped and listed in one warning; when none can be read, a
    `CapexpError` (exit 2) and no CSV.
    """
    import time

    started = time.perf_counter()
    made = caption_refs(image_refs(list_images(images_dir)), checkpoints, beam=beam, batch_size=batch_size,
                        device=device, ensemble=ensemble)
    if not made.images:
        first = "; ".join(f"{name}: {reason}" for name, reason in made.skipped[:3])
        raise CapexpError(
            f"{images_dir}: none of its {len(made.skipped)} image files could be read ({first}"
            f"{'; ...' if len(made.skipped) > 3 else ''}), so nothing was captioned and {output_csv} was not written. "
            f"Pass a folder of images Pillow can open (images past Pillow's decompression-bomb limit are refused)."
        )
    output_csv.parent.mkdir(parents=True, exist_ok=True)
    with output_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "model_name", "caption"])
        for row, ref in enumerate(made.images):
            for name, texts in zip(made.models, made.captions):
                w.writerow([ref.image_id, name, texts[row]])
    return FolderCaptions(output_csv, len(made.images), made.models, made.skipped, time.perf_counter() - started)


def _encode_per_encoder(checkpoints: list[Checkpoint], groups: dict[str, list[int]], refs: list[Any],
                        dev: torch.device, batch_size: int) -> tuple[list[int], dict[str, Any], list[tuple[str, str]]]:
    """Each distinct encoder over the images (its own progress bar): the indices into `refs` every
    encoder could read, each encoder's features of those, and the unreadable files. An unreadable
    file is warned about (by encode_images) once: later encoders never see it."""
    from capexp.backbones.feature_cache import encode_images

    encoded: dict[str, tuple[list[int], Any]] = {}  # cache_id -> (indices into refs, features)
    todo = list(range(len(refs)))
    skipped: list[tuple[str, str]] = []
    for cache_id, members in groups.items():
        enc = encode_images(checkpoints[members[0]].card, [refs[i] for i in todo], device=dev, batch_size=batch_size)
        skipped += enc.skipped
        todo = [todo[j] for j in enc.kept]
        encoded[cache_id] = (todo, enc.features)
    features: dict[str, Any] = {}
    for cache_id, (kept, feats) in encoded.items():  # keep only what every encoder read
        rows = [j for j, i in enumerate(kept) if i in set(todo)] if len(kept) != len(todo) else None
        features[cache_id] = feats if rows is None else feats[rows]
    return todo, features, skipped


def _caption_per_model(checkpoints: list[Checkpoint], groups: dict[str, list[int]], features: dict[str, Any],
                       names: list[str], n_images: int, dev: torch.device, beam: int | None,
                       batch_size: int) -> list[list[str]]:
    """Every model's captions of the encoded images (under one progress bar), one model in memory at a time."""
    from tqdm.auto import tqdm

    captions: list[list[str]] = [[] for _ in checkpoints]  # per model, in image order
    with tqdm(total=n_images * len(checkpoints), desc="captioning", unit="caption") as bar:
        for cache_id, members in groups.items():
            for i in members:
                bar.set_postfix(model=names[i])
                captioner = checkpoints[i].load(str(dev))
                for start in range(0, n_images, batch_size):
                    batch = captioner.caption_features(features[cache_id][start : start + batch_size], beam=beam,
                                                       batch_size=batch_size)
                    captions[i] += batch
                    bar.update(len(batch))
                del captioner  # one model in memory at a time
    return captions


def _caption_as_ensemble(checkpoints: list[Checkpoint], features: torch.Tensor, dev: torch.device, beam: int | None,
                         batch_size: int) -> list[str]:
    """The ensemble's captions of the encoded images, decoded as the first run's `evaluation` says."""
    from capexp.model.decoding import decode

    members = [c.load(str(dev)) for c in checkpoints]
    first = members[0]
    return decode([m.model for m in members], first.tokenizer, features, first.options(beam), batch_size=batch_size,
                  device=dev)
