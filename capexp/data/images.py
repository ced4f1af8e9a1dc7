"""The one way capexp opens an image file: with a pixel cap, and every failure an `UnreadableImage`.

Training, captioning, evaluation, the gallery and the served model all read images through
`read_image`. An image of at most `max_image_pixels()` pixels (width x height, from its header)
decodes exactly as Pillow decodes it; a larger one decodes small: a JPEG through Pillow's
`draft` (the decoder's own 1/2, 1/4 or 1/8 scaling, so the full-size pixels never exist), any
other format is decoded and then `reduce`d by the smallest whole factor that brings it under the
cap. Pillow's own decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) still applies first:
an image past it, like any file Pillow cannot decode, is an `UnreadableImage` with a one-line
reason, never a crash.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps

__all__ = ["MAX_PIXELS_ENV", "UnreadableImage", "image_size", "max_image_pixels", "read_image"]

MAX_PIXELS_ENV = "CAPEXP_MAX_IMAGE_PIXELS"
_DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # 8192 x 8192: above every camera photo; Pillow warns at 89.5 M


class UnreadableImage(ValueError):
    """A file that is not an image capexp can decode (missing, corrupt, not an image, too large)."""


def max_image_pixels() -> int:
    """The pixel cap: $CAPEXP_MAX_IMAGE_PIXELS, else 67,108,864 (8192 x 8192)."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return _DEFAULT_MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        from capexp.errors import CapexpError

        raise CapexpError(f"${MAX_PIXELS_ENV} is {text!r}: set it to a whole number of pixels (width x height), "
                          f"such as {_DEFAULT_MAX_PIXELS}, or unset it.")
    return value


def _source(source: Path | bytes) -> Path | io.BytesIO:
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def image_size(source: Path | bytes) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding its pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_source(source)) as im:
                return im.size
    except Exception as e:  # noqa: BLE001 - any failure of Pillow's parsers on a file is "unreadable"
        raise UnreadableImage(_reason(e)) from None


def read_image(source: Path | bytes, max_pixels: int | None = None) -> Image.Image:
    """The image file at `source` (a path, or the file's bytes) as RGB, EXIF orientation applied.

    At most `max_pixels` (default `max_image_pixels()`) are decoded, as the module docstring says.
    Raises `UnreadableImage` with a one-line reason for anything Pillow cannot decode.
    """
    cap = max_pixels or max_image_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_source(source)) as im:
                return ImageOps.exif_transpose(_within(im, cap)).convert("RGB")
    except Exception as e:  # noqa: BLE001 - any failure of Pillow's decoders on a file is "unreadable"
        raise UnreadableImage(_reason(e)) from None


def _within(im: Image.Image, cap: int) -> Image.Image:
    """`im` itself when it has at most `cap` pixels; else a smaller decoding of it under the cap."""
    w, h = im.size
    if w * h <= cap:
        return im
    if im.format == "JPEG":
        scale = next((s for s in (2, 4, 8) if math.ceil(w / s) * math.ceil(h / s) <= cap), 8)
        im.draft(None, (w // scale, h // scale))  # the decoder scales by 1/scale while it decodes
        w, h = im.size
        if w * h <= cap:
            return im
    im.load()
    if im.mode not in ("L", "RGB", "I", "F", "LA", "RGBA"):  # `reduce` takes no palette or 1-bit images
        im = im.convert("RGBA" if "transparency" in im.info or im.mode in ("PA", "RGBa") else "RGB")
    factor = math.ceil(math.sqrt(w * h / cap))
    while math.ceil(w / factor) * math.ceil(h / factor) > cap:
        factor += 1
    return im.reduce(factor)
