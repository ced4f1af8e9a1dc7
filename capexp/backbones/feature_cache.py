"""The feature cache: every image is encoded once per encoder card, then read from disk.

Features live under `cache_root()/features/<card.cache_id>/` as safetensors shards (never
pickle). Each tensor is named by a hash of the image's content key, so a changed file (new key)
is encoded again and an unchanged one never is. A shard is written to a temporary file and
renamed into place, so several processes can read one cache while another fills it; processes
that need to encode take turns (a file lock per encoder folder), so a study's workers never
encode the same image twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capexp.errors import warn
from capexp.paths import cache_root

if TYPE_CHECKING:
    import torch

    from capexp.backbones import EncoderCard
    from capexp.data import ImageRef, Split

__all__ = ["cache_root", "EncodedImages", "encode_images", "encode_split"]

log = logging.getLogger("capexp")

_SHARD_IMAGES = 2048  # write a shard at least this often, so an interrupted encoding keeps its work
_FP16_MAX = 6e4  # features beyond this are stored as float32


@dataclass
class EncodedImages:
    features: torch.Tensor  # (N_kept, D) or (N_kept, T, D), float32
    kept: list[int]  # indices into the input images that were readable
    skipped: list[tuple[str, str]]  # (image_id, reason) of unreadable images
    n_cached: int  # served from the cache
    n_encoded: int  # encoded by this call


def encode_images(
    card: EncoderCard,
    images: list[ImageRef],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
) -> EncodedImages:
    """Features of `images` under `card`, encoding only those not cached yet.

    Unreadable images are skipped with one warning. The encoder is loaded only when something
    is missing. Cached features are float16 on disk (float32 when too large, and always for a trunk's output,
    so trained blocks see exactly what the whole encoder would), returned as float32.
    """
    from filelock import FileLock

    folder = cache_root() / "features" / card.cache_id
    folder.mkdir(parents=True, exist_ok=True)
    _describe(folder, card)
    names = [_tensor_name(im.key) for im in images]
    index = _index(folder)
    lock: FileLock | contextlib.nullcontext = contextlib.nullcontext()
    if any(name not in index for name in names):
        lock = FileLock(str(folder / ".encode.lock"), mode=0o666 & ~_umask())
    with lock:  # processes sharing the cache encode into one folder in turn
        if isinstance(lock, FileLock):
            index = _index(folder)  # what another process wrote while this one waited
        missing: dict[str, int] = {}  # tensor name -> first image with it (an image listed twice is encoded once)
        for i, name in enumerate(names):
            if name not in index:
                missing.setdefault(name, i)
        todo = list(missing.values())
        n_cached = len(images) - sum(name in missing for name in names)
        h, w = card.image_size
        kind = "" if card.features == "pooled" else f" ({card.features})"
        if card.trained_blocks:
            kind = f" (the trunk before the last {card.trained_blocks} blocks)"
        log.info("feature cache %s @ %dx%d%s: %d of %d images cached, %d to encode",
                 card.name, h, w, kind, n_cached, len(images), len(todo))
        reasons = _encode(card, images, names, todo, folder, index, device, batch_size, progress) if todo else {}
    kept = [i for i in range(len(images)) if names[i] in index]
    skipped = [(images[i].image_id, reasons[names[i]]) for i in range(len(images)) if names[i] not in index]
    if skipped:
        first = ", ".join(image_id for image_id, _ in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warn(f"{len(skipped)} of {len(images)} images could not be read and are skipped: {first}{more}.")

    return EncodedImages(
        features=_read(index, [names[i] for i in kept], card),
        kept=kept,
        skipped=skipped,
        n_cached=n_cached,
        n_encoded=len(images) - n_cached - len(skipped),
    )


def encode_split(card: EncoderCard, split: Split, device: torch.device | str, batch_size: int) -> tuple[Split, EncodedImages]:
    """Features of a split's images through the feature cache, and the split without unreadable images."""
    enc = encode_images(card, split.images, device=device, batch_size=batch_size)
    if enc.skipped:
        split = split.drop(set(range(len(split.images))) - set(enc.kept))
    return split, enc


def _umask() -> int:
    """This process's umask (reading it means setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tensor_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _describe(folder: Path, card: EncoderCard) -> None:
    """A card.json beside the shards, so a person can tell what a cache folder holds."""
    target = folder / "card.json"
    if target.is_file():
        return
    about = {"name": card.name, "image_size": list(card.image_size), "features": card.features,
             "feature_dim": card.feature_dim, "source": card.source, "revision": card.revision}
    if card.trained_blocks:  # not features: the trunk's output, the input of the last N blocks
        about |= {"features": "trunk", "before_last_blocks": card.trained_blocks}
    _atomic_write(target, lambda tmp: Path(tmp).write_text(json.dumps(about, indent=2)))


def _index(folder: Path) -> dict[str, Path]:
    """Tensor name -> shard file, over every complete shard in the folder."""
    from safetensors import safe_open

    index: dict[str, Path] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            index.update(dict.fromkeys(f.keys(), shard))
    return index


def _read(index: dict[str, Path], names: list[str], card: EncoderCard) -> torch.Tensor:
    """The tensors `names` stacked as float32, opening each shard once."""
    import torch
    from safetensors import safe_open

    if not names:
        return torch.zeros((0, card.feature_dim) if card.features == "pooled" else (0, 0, card.feature_dim))
    by_shard: dict[Path, list[str]] = {}
    for name in dict.fromkeys(names):
        by_shard.setdefault(index[name], []).append(name)
    loaded: dict[str, torch.Tensor] = {}
    for shard, wanted in by_shard.items():
        with safe_open(shard, framework="pt") as f:
            loaded.update({name: f.get_tensor(name) for name in wanted})
    out = torch.empty((len(names), *loaded[names[0]].shape))  # float32
    for row, name in enumerate(names):
        out[row].copy_(loaded[name])  # float16 -> float32
    return out


def _encode(card: EncoderCard, images: list[ImageRef], names: list[str], todo: list[int], folder: Path,
            index: dict[str, Path], device: torch.device | str, batch_size: int, progress: bool) -> dict[str, str]:
    """Encode images `todo` in batches, writing shards as it goes; returns {tensor name: reason} of unreadable ones.

    A background thread reads and preprocesses the next batch while the encoder runs.
    """
    import torch
    from tqdm.auto import tqdm

    from capexp.data.images import UnreadableImage

    def prepare(batch: list[int]) -> tuple[list[int], torch.Tensor | None, dict[str, str]]:
        readable, pils, failed = [], [], {}
        for i in batch:
            try:
                pils.append(images[i].load())
                readable.append(i)
            except UnreadableImage as e:  # missing, truncated, not an image or past Pillow's bomb limit
                failed[names[i]] = f"unreadable: {e}"
        return readable, card.preprocess(pils) if pils else None, failed

    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    skipped: dict[str, str] = {}
    pending: dict[str, torch.Tensor] = {}
    h, w = card.image_size
    # Building the encoder draws random init weights before loading its own: keep the caller's
    # RNG untouched, so a run is the same whether its features were encoded now or cached.
    with torch.random.fork_rng(devices=[]), ThreadPoolExecutor(max_workers=1) as pool, \
            tqdm(total=len(todo), desc=f"encoding {card.name} @ {h}x{w}", unit="img", disable=not progress) as bar:
        encoder = card.load(device)
        ahead = pool.submit(prepare, batches[0])
        for k in range(len(batches)):
            readable, pixels, failed = ahead.result()
            if k + 1 < len(batches):
                ahead = pool.submit(prepare, batches[k + 1])
            skipped.update(failed)
            if pixels is not None:
                with torch.inference_mode():
                    out = encoder(pixels.to(device)).float().cpu()  # (B, D) or (B, T, D)
                if out.abs().max() < _FP16_MAX and not card.trained_blocks:  # the trunk's output stays exact
                    out = out.half()
                pending.update({names[i]: row.clone(memory_format=torch.contiguous_format) for i, row in zip(readable, out)})
            bar.update(len(batches[k]))
            if len(pending) >= _SHARD_IMAGES:
                index.update(_write_shard(folder, pending))
                pending = {}
    if pending:
        index.update(_write_shard(folder, pending))
    return skipped


def _write_shard(folder: Path, tensors: dict[str, torch.Tensor]) -> dict[str, Path]:
    from safetensors.torch import save_file

    shard = folder / f"{uuid.uuid4().hex}.safetensors"
    _atomic_write(shard, lambda tmp: save_file(tensors, tmp))
    return dict.fromkeys(tensors, shard)


def _atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """Write to a temporary file beside `target`, then rename: readers never see a partial file."""
    tmp = str(target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # safetensors writes private files; a team may share the cache
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
