"""The guarded image reader: images under the pixel cap decode as Pillow decodes them; larger ones
decode small; bombs and broken files are `UnreadableImage`, never a crash."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from capexp.data.images import MAX_PIXELS_ENV, UnreadableImage, image_size, max_image_pixels, read_image


def _bomb(path: Path) -> Path:
    """A 20000 x 20000 1-bit PNG: 48 KB on disk, 400 M pixels (past Pillow's decompression-bomb error)."""
    Image.new("1", (20000, 20000)).save(path)
    return path


def test_an_image_under_the_cap_decodes_exactly_as_pillow_does(make_photos, tmp_path: Path) -> None:
    photo = make_photos(tmp_path, 1, px=200)[0][0]
    with Image.open(photo) as im:
        plain = ImageOps.exif_transpose(im).convert("RGB")
    for source in (photo, photo.read_bytes()):
        assert np.array_equal(np.asarray(read_image(source)), np.asarray(plain))
    assert image_size(photo) == (200, 200)


def test_a_jpeg_past_the_cap_decodes_small_through_draft(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.radial_gradient("L").resize((1600, 1200)).convert("RGB").save(path, quality=90)
    small = read_image(path, max_pixels=1600 * 1200 // 4)
    assert small.size == (800, 600) and small.mode == "RGB"  # the decoder's 1/2 scale, never full size
    assert read_image(path, max_pixels=1600 * 1200 // 16).size == (400, 300)
    assert read_image(path, max_pixels=1600 * 1200).size == (1600, 1200)


@pytest.mark.parametrize("mode", ["P", "1", "RGBA", "L"])
def test_other_formats_past_the_cap_are_reduced_under_it(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"big-{mode}.png"
    Image.new(mode, (1000, 700)).save(path)
    cap = 1000 * 700 // 5
    image = read_image(path, max_pixels=cap)
    assert image.mode == "RGB" and image.width * image.height <= cap
    assert image.size == (334, 234)  # reduced by 3: the smallest whole factor under the cap


def test_bombs_and_broken_files_are_unreadable_with_a_reason(tmp_path: Path) -> None:
    bomb = _bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        with pytest.raises(UnreadableImage, match="DecompressionBombError"):
            read_image(bomb)
        warned = tmp_path / "warned.png"
        Image.new("1", (10000, 9000)).save(warned)  # past Pillow's warning, under its error
        with pytest.raises(UnreadableImage, match="DecompressionBombWarning"):
            read_image(warned)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(UnreadableImage, match="UnidentifiedImageError"):
        read_image(tmp_path / "text.jpg")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    with pytest.raises(UnreadableImage):
        read_image(buffer.getvalue()[:80])  # truncated
    with pytest.raises(UnreadableImage, match="FileNotFoundError"):
        read_image(tmp_path / "gone.png")


def test_the_cap_is_configurable_and_a_bad_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from capexp.errors import CapexpError

    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    assert max_image_pixels() == 1000
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(CapexpError, match=MAX_PIXELS_ENV):
        max_image_pixels()
