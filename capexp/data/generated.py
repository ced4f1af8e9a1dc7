"""Generated data: plain-background shape images with five captions that describe them.

Each image holds one shape at a position ("a red circle on the left"), a row of two or three
identical shapes ("two red circles"), or two different shapes side by side ("a red circle left
of a blue square"). Colours, shapes and positions are few and salient, so a small mapper on
pooled CNN features learns them in minutes. Everything follows from (seed, split, index)
through a string-seeded `random.Random`, so every machine renders the same images and captions.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from capexp.data.types import ImageRef, Split, Splits
from capexp.spec.schema import GeneratedData

__all__ = ["GENERATOR_VERSION", "COLOURS", "SHAPES", "POSITIONS", "load_generated"]

GENERATOR_VERSION = 1  # bump on any change to scenes, drawing or captions: it is part of the cache key

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "diamond")
POSITIONS: dict[str, tuple[float, float]] = {  # centre (x, y) as fractions of the side
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "centre": (0.5, 0.5),
}
_BACKGROUND = 235  # light grey
_NUMBERS = {2: "two", 3: "three"}
_ON_THE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "centre": "in the centre"}
_SIDE = {"left": "at the left side", "right": "at the right side", "top": "near the top", "bottom": "near the bottom",
         "centre": "in the middle"}


@dataclass(frozen=True)
class _Shape:
    kind: str  # one of SHAPES
    rgb: tuple[int, int, int]
    cx: float  # centre and side, as fractions of the image side
    cy: float
    size: float


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)
    return r, g, b


def _single(rng: random.Random) -> tuple[list[_Shape], list[str]]:
    colour, kind, pos = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(POSITIONS))
    x, y = POSITIONS[pos]
    cx, cy = x + rng.uniform(-0.03, 0.03), y + rng.uniform(-0.03, 0.03)
    shape = _Shape(kind, _jitter(rng, COLOURS[colour], 12), cx, cy, rng.uniform(0.36, 0.44))
    on, side = _ON_THE[pos], _SIDE[pos]
    captions = [
        f"a {colour} {kind} {on}",
        f"one {colour} {kind} {side}",
        f"there is a {colour} {kind} {on}",
        f"a single {colour} {kind} {side}",
        f"{colour} {kind} {on} of the image",
    ]
    return [shape], captions


def _group(rng: random.Random) -> tuple[list[_Shape], list[str]]:
    n, colour, kind = rng.choice((2, 3)), rng.choice(list(COLOURS)), rng.choice(SHAPES)
    xs, size = ((0.27, 0.73), 0.34) if n == 2 else ((0.18, 0.5, 0.82), 0.23)
    y = 0.5 + rng.uniform(-0.12, 0.12)
    shapes = [_Shape(kind, _jitter(rng, COLOURS[colour], 12), x + rng.uniform(-0.02, 0.02), y, size) for x in xs]
    num = _NUMBERS[n]
    captions = [
        f"{num} {colour} {kind}s",
        f"{num} {colour} {kind}s in a row",
        f"there are {num} {colour} {kind}s",
        f"{num} {kind}s that are {colour}",
        f"a row of {num} {colour} {kind}s",
    ]
    return shapes, captions


def _pair(rng: random.Random) -> tuple[list[_Shape], list[str]]:
    (c1, c2), (k1, k2) = rng.sample(list(COLOURS), 2), rng.sample(SHAPES, 2)
    shapes = [
        _Shape(k, _jitter(rng, COLOURS[c], 12), x + rng.uniform(-0.03, 0.03), 0.5 + rng.uniform(-0.15, 0.15),
               rng.uniform(0.33, 0.39))
        for k, c, x in ((k1, c1, 0.27), (k2, c2, 0.73))
    ]
    a, b = f"{c1} {k1}", f"{c2} {k2}"
    captions = [
        f"a {a} and a {b}",
        f"a {a} left of a {b}",
        f"a {b} right of a {a}",
        f"a {a} beside a {b}",
        f"a {a} next to a {b}",
    ]
    return shapes, captions


def _scene(seed: int, split: str, index: int) -> tuple[list[_Shape], int, list[str]]:
    """The shapes, background grey level and five captions of one image."""
    rng = random.Random(f"capexp-generated/v{GENERATOR_VERSION}/{seed}/{split}/{index}")
    make = rng.choices((_single, _group, _pair), weights=(2, 1, 1))[0]
    shapes, captions = make(rng)
    return shapes, _BACKGROUND + rng.randint(-6, 6), captions


def _render(shapes: tuple[_Shape, ...], background: int, px: int) -> Image.Image:
    image = Image.new("RGB", (px, px), (background,) * 3)
    draw = ImageDraw.Draw(image)
    for s in shapes:
        cx, cy, h = s.cx * px, s.cy * px, s.size * px / 2
        if s.kind == "circle":
            draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=s.rgb)
        elif s.kind == "square":
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=s.rgb)
        elif s.kind == "triangle":
            draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=s.rgb)
        else:  # diamond
            draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=s.rgb)
    return image


def _split(data: GeneratedData, split: str, count: int) -> Split:
    images, captions = [], []
    for i in range(count):
        shapes, background, caps = _scene(data.seed, split, i)
        key = f"generated/v{GENERATOR_VERSION}/seed={data.seed}/px={data.image_px}/{split}/{i}"
        render = functools.partial(_render, tuple(shapes), background, data.image_px)
        images.append(ImageRef(f"{split}_{i:06d}.png", key, None, render))
        captions.append(caps)
    return Split(images, captions)


def load_generated(data: GeneratedData) -> Splits:
    """`num_train` and `num_val` images; train and val come from separate streams, so never coincide."""
    return Splits(train=_split(data, "train", data.num_train), val=_split(data, "val", data.num_val))
