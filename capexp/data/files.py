"""Loaders of file-based sources (caption_list, coco, flickr8k, karpathy): spec section in, `Splits` out.

Images whose file is missing are left out with one warning per split, so a partial download
(the COCO sample's 40 of 5,000 images) still runs.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from capexp.data.digests import file_keys
from capexp.data.types import ImageRef, Split, Splits
from capexp.errors import CapexpError, warn
from capexp.spec.schema import CaptionListData, CocoData, Flickr8kData, KarpathyData
from capexp.spec.loading import expand_path

__all__ = ["load_caption_list", "load_coco", "load_flickr8k", "load_karpathy"]

_HOLDOUT_SEED = 0  # COCO `val_fraction`: the same held-out images for every run of a study


# ---------------------------------------------------------------------------- helpers
def _clean(captions: Iterable[Any]) -> list[str]:
    """Captions with whitespace collapsed; empty ones dropped."""
    out = []
    for c in captions:
        text = " ".join(str(c).split()) if c is not None else ""
        if text:
            out.append(text)
    return out


def _file_split(entries: Iterable[tuple[str, Path, list[Any]]], listing: str, folder: str) -> Split:
    """A split from (image_id, absolute path, captions); missing files are left out with one warning.

    `listing` names what listed the images (file and spec key), `folder` where they were looked for.
    """
    listed = [(image_id, path, caps) for image_id, path, raw in entries if (caps := _clean(raw))]
    total = len(listed)
    images: list[ImageRef] = []
    captions: list[list[str]] = []
    for (image_id, path, caps), key in zip(listed, file_keys([path for _, path, _ in listed])):
        if key is not None:
            images.append(ImageRef.from_file(path, image_id, key))
            captions.append(caps)
    if total == 0:
        raise CapexpError(f"{listing} lists no image with a caption. Check that it is the right file.")
    if not images:
        raise CapexpError(
            f"None of the {total:,} images listed in {listing} exist in {folder}. "
            f"Point the spec at the folder that holds the image files."
        )
    if len(images) < total:
        warn(
            f"{total - len(images):,} of {total:,} images listed in {listing} are missing from {folder} "
            f"and are left out (a partial download?); using the {len(images):,} that exist."
        )
    return Split(images, captions)


def _read_json(path: Path, key: str) -> Any:
    if not path.is_file():
        raise CapexpError(f"`data_paths.{key}` names {path}, which does not exist. Fix the path in the spec.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CapexpError(f"{path} (`data_paths.{key}`) is not valid JSON: {e}. Fix or replace the file.") from None


def _path(value: str) -> Path:
    """A spec path, expanded and made absolute against the current directory."""
    return Path(os.path.abspath(expand_path(value)))


def _holdout(split: Split, fraction: float) -> tuple[Split, Split]:
    """(rest, held out): a fixed-seed `fraction` of the images, at least one on each side."""
    n_val = min(len(split) - 1, max(1, round(fraction * len(split))))
    if n_val < 1:
        raise CapexpError(
            f"`data_paths.val_fraction` = {fraction} needs at least 2 training images, but only {len(split)} exist."
        )
    held = set(random.Random(_HOLDOUT_SEED).sample(range(len(split)), n_val))
    rest = split.drop(held)
    val = split.drop(set(range(len(split))) - held)
    return rest, val


# ---------------------------------------------------------------------------- caption_list
def _caption_list_split(data: CaptionListData, key: str) -> Split:
    json_path = _path(getattr(data, key))
    entries = _read_json(json_path, key)
    if not isinstance(entries, list):
        raise CapexpError(
            f"{json_path} (`data_paths.{key}`) must hold a JSON list of {{\"image\": path, \"caption\": text}}, "
            f"not a {type(entries).__name__}."
        )
    bases = [_path(data.images_root)] if data.images_root else [json_path.parent, Path.cwd()]
    grouped: dict[Path, list[str]] = {}
    names: dict[Path, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
            raise CapexpError(
                f"{json_path} (`data_paths.{key}`): entry {i} is {json.dumps(entry)[:80]}; every entry must be "
                f"{{\"image\": path, \"caption\": text}}. Fix the file."
            )
        raw = Path(str(entry["image"])).expanduser()
        if raw.is_absolute():
            path = raw
        else:
            candidates = [Path(os.path.abspath(b / raw)) for b in bases]
            path = next((c for c in candidates if c.is_file()), candidates[0])
        grouped.setdefault(path, []).append(entry["caption"])
        names.setdefault(path, raw.name)
    where = " or ".join(str(b) for b in bases)
    folder = f"{where} (relative paths; set `data_paths.images_root` to change this)"
    return _file_split(((names[p], p, caps) for p, caps in grouped.items()), f"{json_path} (`data_paths.{key}`)", folder)


def load_caption_list(data: CaptionListData) -> Splits:
    return Splits(train=_caption_list_split(data, "train_captions_path"), val=_caption_list_split(data, "val_captions_path"))


# ---------------------------------------------------------------------------- coco
def _coco_split(annotations: str, images: str, ann_key: str, img_key: str) -> Split:
    ann_path = _path(annotations)
    folder = _path(images)
    data = _read_json(ann_path, ann_key)
    try:
        by_image: dict[Any, list[str]] = {}
        for a in data["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a["caption"])
        listed = [(im["file_name"], by_image.get(im["id"], [])) for im in data["images"]]
    except (KeyError, TypeError) as e:
        raise CapexpError(
            f"{ann_path} (`data_paths.{ann_key}`) is not a COCO captions file: it needs `images` "
            f"(id, file_name) and `annotations` (image_id, caption); missing {e}. Use a captions_*.json file."
        ) from None
    entries = ((name, folder / name, caps) for name, caps in listed)
    return _file_split(entries, f"{ann_path} (`data_paths.{ann_key}`)", f"{folder} (`data_paths.{img_key}`)")


def load_coco(data: CocoData) -> Splits:
    train = _coco_split(data.train_annotations, data.train_images, "train_annotations", "train_images")
    same = _path(data.val_annotations) == _path(data.train_annotations)
    if data.val_fraction == 0.0:
        val = train if same else _coco_split(data.val_annotations, data.val_images, "val_annotations", "val_images")
        return Splits(train=train, val=val)
    # Held out from train for validation; the val file (when another one) becomes the test split.
    train, val = _holdout(train, data.val_fraction)
    test = None if same else _coco_split(data.val_annotations, data.val_images, "val_annotations", "val_images")
    return Splits(train=train, val=val, test=test)


# ---------------------------------------------------------------------------- flickr8k
_FLICKR_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset")  # the official typo, and the fixed spelling


def load_flickr8k(data: Flickr8kData) -> Splits:
    root = _path(data.root)
    text = root / "Flickr8k_text"
    token_file = text / "Flickr8k.token.txt"
    image_dir = next((root / d for d in _FLICKR_IMAGE_DIRS if (root / d).is_dir()), root / _FLICKR_IMAGE_DIRS[0])
    if not token_file.is_file():
        raise CapexpError(
            f"Flickr8k captions not found: {token_file} does not exist (`data_paths.root` = {data.root!r}). "
            f"Set `data_paths.root` (or $CAPEXP_DATA) to the folder holding Flicker8k_Dataset/ and Flickr8k_text/."
        )
    captions: dict[str, list[str]] = {}
    for line in token_file.read_text(encoding="utf-8").splitlines():
        key, sep, caption = line.partition("\t")
        if sep:
            captions.setdefault(key.rsplit("#", 1)[0], []).append(caption)

    def split(part: str) -> Split:
        listing = text / f"Flickr_8k.{part}Images.txt"
        if not listing.is_file():
            raise CapexpError(
                f"Flickr8k split list {listing} does not exist. Restore it from the Flickr8k_text download "
                f"(it names the {part} images)."
            )
        names = [n.strip() for n in listing.read_text(encoding="utf-8").splitlines() if n.strip()]
        return _file_split(((n, image_dir / n, captions.get(n, [])) for n in names), str(listing), str(image_dir))

    test = split("test")
    return Splits(train=split("train"), val=split("dev") if data.val_split == "dev" else test, test=test)


# ---------------------------------------------------------------------------- karpathy
def load_karpathy(data: KarpathyData) -> Splits:
    json_path = _path(data.dataset_json)
    root = _path(data.images_root)
    doc = _read_json(json_path, "dataset_json")
    by_split: dict[str, list[tuple[str, Path, list[Any]]]] = {}
    try:
        for im in doc["images"]:
            path = root / im.get("filepath", "") / im["filename"]
            caps = [s["raw"] for s in im["sentences"]]
            by_split.setdefault(im["split"], []).append((im["filename"], path, caps))
    except (KeyError, TypeError) as e:
        raise CapexpError(
            f"{json_path} (`data_paths.dataset_json`) is not a Karpathy split file: each of `images` needs "
            f"filename, split and sentences[].raw; missing {e}. Use dataset_coco.json or dataset_flickr8k.json."
        ) from None
    listing = f"{json_path} (`data_paths.dataset_json`)"
    folder = f"{root} (`data_paths.images_root`)"

    def split(*names: str) -> Split:
        return _file_split((e for n in names for e in by_split.get(n, [])), f"{listing}, split {'+'.join(names)}", folder)

    train = split("train", "restval") if data.include_restval else split("train")
    test = split("test") if by_split.get("test") else None
    if data.val_split == "val":
        return Splits(train=train, val=split("val"), test=test)
    if test is None:
        raise CapexpError(f"{listing} has no `test` images; set `data_paths.val_split` to \"val\".")
    return Splits(train=train, val=test, test=test)
