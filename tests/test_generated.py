"""Generated data: deterministic, described truthfully by its captions, train and val apart."""

from __future__ import annotations

import numpy as np
import pytest

from capexp.data import load_data
from capexp.data.generated import COLOURS, GENERATOR_VERSION, SHAPES, load_generated
from capexp.spec.schema import GeneratedData, Spec, TrainingConfig

_NUMBERS = {"two": 2, "three": 3}
# What the colour words mean, independent of the generator's palette; "background" is the grey.
_CANONICAL = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
              "black": (0, 0, 0), "background": (255, 255, 255)}
_WHERE = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "centre": (0.5, 0.5)}


def _data(**kw: object) -> GeneratedData:
    return GeneratedData(source="generated", **{"num_train": 60, "num_val": 20, **kw})


def _colour_mask(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels by the colour word whose canonical RGB they are nearest to."""
    names = list(_CANONICAL)
    dist = ((pixels[:, :, None, :].astype(int) - np.array(list(_CANONICAL.values()))) ** 2).sum(axis=3)
    nearest = dist.argmin(axis=2)
    return {name: nearest == i for i, name in enumerate(names) if name != "background"}


def _shape_of(mask: np.ndarray) -> str:
    """circle/square/triangle/diamond from how much of its bounding box a lone shape fills."""
    rows, cols = np.nonzero(mask)
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    fill = box.mean()
    if fill > 0.93:
        return "square"
    if fill > 0.7:
        return "circle"
    widths = box.sum(axis=1)
    return "triangle" if widths.argmax() > 0.8 * len(widths) else "diamond"


def _position_of(mask: np.ndarray) -> str:
    rows, cols = np.nonzero(mask)
    y, x = rows.mean() / mask.shape[0], cols.mean() / mask.shape[1]
    return min(_WHERE, key=lambda p: (_WHERE[p][0] - x) ** 2 + (_WHERE[p][1] - y) ** 2)


def test_same_images_and_captions_every_time() -> None:
    a, b = load_generated(_data()), load_generated(_data())
    assert a.train.captions == b.train.captions and a.val.captions == b.val.captions
    for ra, rb in zip(a.train.images[:10], b.train.images[:10]):
        assert ra.key == rb.key and ra.load().tobytes() == rb.load().tobytes()
    # Pinned: a string-seeded random.Random gives these on every machine and Python version.
    assert [c[0] for c in a.train.captions[:5]] == [
        "a blue triangle in the centre",
        "a red diamond on the left",
        "a yellow triangle at the top",
        "a yellow square on the right",
        "a yellow triangle and a black diamond",
    ]


@pytest.mark.parametrize("px", [64, 96])
def test_captions_describe_the_pixels(px: int) -> None:
    splits = load_generated(_data(image_px=px))
    checked = {"single": 0, "group": 0, "pair": 0}
    for ref, captions in zip(splits.train.images, splits.train.captions):
        image = ref.load()
        assert image.size == (px, px) and image.mode == "RGB"
        masks = _colour_mask(np.asarray(image))
        drawn = {name for name, m in masks.items() if m.sum() >= 20}
        first = captions[0].split()
        named = {w for w in first if w in COLOURS}
        assert drawn == named, (ref.image_id, captions)
        for caption in captions:  # every paraphrase names the same colours and shapes
            assert {w for w in caption.split() if w in COLOURS} == named
        if first[0] == "a" and "and" not in first:  # one shape at a position
            (colour,) = named
            shape, position = _shape_of(masks[colour]), _position_of(masks[colour])
            assert shape in first and position in first, (ref.image_id, shape, position, captions)
            checked["single"] += 1
        elif first[0] in _NUMBERS:  # a row of identical shapes: count the runs along the widest row
            (colour,) = named
            row = masks[colour][masks[colour].sum(axis=1).argmax()].astype(int)
            runs = int((np.diff(np.concatenate([[0], row])) == 1).sum())
            assert runs == _NUMBERS[first[0]], (ref.image_id, captions)
            checked["group"] += 1
        else:  # two different shapes: the first named colour is on the left
            left, right = [w for w in first if w in COLOURS]
            assert np.nonzero(masks[left])[1].mean() < np.nonzero(masks[right])[1].mean(), (ref.image_id, captions)
            checked["pair"] += 1
    assert min(checked.values()) >= 5, checked


def test_captions_are_short_paraphrases_over_a_small_vocabulary() -> None:
    splits = load_generated(_data(num_train=300))
    vocab = set()
    for captions in splits.train.captions:
        assert len(captions) == 5 and len(set(captions)) == 5
        assert all(1 <= len(c.split()) <= 8 for c in captions)
        vocab.update(w for c in captions for w in c.split())
    assert set(COLOURS) | set(SHAPES) <= vocab
    assert len(vocab) <= 45, sorted(vocab)


def test_train_and_val_are_disjoint() -> None:
    splits = load_generated(_data())
    train_keys = {r.key for r in splits.train.images}
    val_keys = {r.key for r in splits.val.images}
    assert len(train_keys) == 60 and len(val_keys) == 20 and not train_keys & val_keys
    assert not {r.image_id for r in splits.train.images} & {r.image_id for r in splits.val.images}
    train_pixels = {r.load().tobytes() for r in splits.train.images}
    assert not train_pixels & {r.load().tobytes() for r in splits.val.images}


def test_val_does_not_move_when_train_grows() -> None:
    small, big = load_generated(_data(num_train=10)), load_generated(_data(num_train=50))
    assert small.val.images == big.val.images and small.val.captions == big.val.captions
    assert big.train.images[:10] == small.train.images


def test_cache_key_follows_generator_params() -> None:
    base = load_generated(_data()).train.images[0]
    assert f"v{GENERATOR_VERSION}" in base.key
    other_seed = load_generated(_data(seed=1)).train.images[0]
    other_size = load_generated(_data(image_px=96)).train.images[0]
    assert len({base.key, other_seed.key, other_size.key}) == 3
    assert other_seed.load().tobytes() != base.load().tobytes()


def test_load_data_dispatches_and_subsets_train_only() -> None:
    spec = Spec(data_paths=_data(), training_config=TrainingConfig(subset_ratio=0.5), seed=7)
    splits = load_data(spec)
    assert len(splits.train) == 30 and len(splits.val) == 20 and splits.test is None
