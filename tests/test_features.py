"""The feature cache: encode once, reuse, re-encode what changed, skip what is unreadable."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from capexp.backbones import EncoderCard, resolve_encoder
from capexp.data import ImageRef
from capexp.backbones.feature_cache import cache_root, encode_images

def _ref(path: Path) -> ImageRef:
    return ImageRef.from_file(path)


@pytest.fixture
def photos(make_photos, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Six JPEG photos in a folder the test may change, and a fresh cache."""
    monkeypatch.setenv("CAPEXP_CACHE", str(tmp_path / "cache"))
    return [p for p, _ in make_photos(tmp_path / "images", 6)]


@pytest.fixture(scope="module")
def card() -> EncoderCard:
    return resolve_encoder("efficientnet-lite0", (32, 32))


def test_second_call_reads_the_cache_without_loading_the_encoder(
    photos: list[Path], card: EncoderCard, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refs = [_ref(p) for p in photos]
    first = encode_images(card, refs, progress=False)
    assert (first.n_encoded, first.n_cached, first.kept, first.skipped) == (6, 0, list(range(6)), [])
    assert first.features.shape == (6, 1280) and first.features.dtype == torch.float32

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the encoder was loaded although everything is cached")

    monkeypatch.setattr(EncoderCard, "load", no_load)
    with caplog.at_level(logging.INFO, logger="capexp"):
        second = encode_images(card, refs, progress=False)
    assert (second.n_encoded, second.n_cached) == (0, 6)
    assert torch.equal(second.features, first.features)
    assert "feature cache efficientnet-lite0 @ 32x32: 6 of 6 images cached, 0 to encode" in caplog.text

    subset = encode_images(card, [refs[4], refs[1]], progress=False)  # any order, any subset
    assert torch.equal(subset.features, first.features[[4, 1]])


def test_cache_holds_only_safetensors_shards(photos: list[Path], card: EncoderCard) -> None:
    encode_images(card, [_ref(p) for p in photos], progress=False)
    files = {p.name for p in (cache_root() / "features" / card.cache_id).iterdir()}
    shards = files - {"card.json", ".encode.lock"}  # the lock file of processes taking turns to encode
    assert "card.json" in files and shards
    assert all(f.endswith(".safetensors") for f in shards)  # no pickle, no leftover temp file


def test_cache_files_follow_the_umask_so_a_team_can_share_the_cache(photos: list[Path], card: EncoderCard) -> None:
    old = os.umask(0o002)  # a group-shared cache
    try:
        encode_images(card, [_ref(p) for p in photos], progress=False)
    finally:
        os.umask(old)
    folder = cache_root() / "features" / card.cache_id
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes and all(mode & 0o664 == 0o664 for mode in modes.values()), modes  # group can read and lock


def test_encoding_leaves_the_callers_random_state_alone(photos: list[Path], card: EncoderCard) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    encode_images(card, [_ref(p) for p in photos], progress=False)  # builds the encoder: random init, then weights
    assert torch.equal(torch.rand(3), expected)  # so a cold-cache run trains the same model as a warm one


def test_other_size_kind_or_encoder_never_reads_stale_features(photos: list[Path], card: EncoderCard) -> None:
    refs = [_ref(p) for p in photos[:2]]
    encode_images(card, refs, progress=False)
    for other in (resolve_encoder("efficientnet-lite0", (64, 64)), resolve_encoder("efficientnet-lite0", (32, 32), "grid")):
        got = encode_images(other, refs, progress=False)
        assert (got.n_encoded, got.n_cached) == (2, 0)
    assert encode_images(resolve_encoder("efficientnet-lite0", (64, 64), "grid"), refs, progress=False).features.shape == (2, 4, 1280)


def test_changed_file_is_encoded_again(photos: list[Path], card: EncoderCard) -> None:
    before = encode_images(card, [_ref(p) for p in photos], progress=False)
    shutil.copy(photos[5], photos[0])  # photo 5's pixels: its features serve photo 0 too
    after = encode_images(card, [_ref(p) for p in photos], progress=False)
    assert (after.n_encoded, after.n_cached) == (0, 6)
    assert torch.equal(after.features[0], before.features[5])
    Image.open(photos[5]).rotate(90).save(photos[0])  # new pixels: encoded again
    after = encode_images(card, [_ref(p) for p in photos], progress=False)
    assert (after.n_encoded, after.n_cached) == (1, 5)
    assert not torch.equal(after.features[0], before.features[0])
    assert torch.equal(after.features[1:], before.features[1:])  # from the cache


def test_a_copied_dataset_is_served_from_the_cache(photos: list[Path], card: EncoderCard, tmp_path: Path) -> None:
    """Copied elsewhere, with new modification times: every image's features come from the cache."""
    before = encode_images(card, [_ref(p) for p in photos], progress=False)
    copy = tmp_path / "copied"
    shutil.copytree(photos[0].parent, copy)  # copy2 keeps mtimes: give them new ones, as a fresh extraction would
    for p in copy.iterdir():
        os.utime(p, ns=(10**18, 10**18))
    after = encode_images(card, [_ref(copy / p.name) for p in photos], progress=False)
    assert (after.n_encoded, after.n_cached) == (0, 6)
    assert torch.equal(after.features, before.features)


def test_unreadable_images_are_skipped_with_one_warning(
    photos: list[Path], card: EncoderCard, caplog: pytest.LogCaptureFixture
) -> None:
    photos[1].write_bytes(b"not a jpeg at all")
    photos[3].write_bytes(photos[3].read_bytes()[:200])  # truncated
    refs = [_ref(p) for p in photos] + [ImageRef("gone.jpg", "gone.jpg|0|0", photos[0].parent / "gone.jpg")]
    with caplog.at_level(logging.INFO, logger="capexp"):
        got = encode_images(card, refs, progress=False)
    assert got.kept == [0, 2, 4, 5]
    assert [image_id for image_id, _ in got.skipped] == [photos[1].name, photos[3].name, "gone.jpg"]
    assert all(reason for _, reason in got.skipped)
    assert got.features.shape == (4, 1280) and got.n_encoded == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 of 7 images could not be read" in warnings[0].getMessage()


def test_repeated_image_is_encoded_once(photos: list[Path], card: EncoderCard) -> None:
    ref = _ref(photos[0])
    got = encode_images(card, [ref, _ref(photos[1]), ref], progress=False)
    assert (got.n_encoded, got.kept) == (3, [0, 1, 2])
    assert torch.equal(got.features[0], got.features[2])
    shards = list((cache_root() / "features" / card.cache_id).glob("*.safetensors"))
    from safetensors import safe_open

    with safe_open(shards[0], framework="pt") as f:
        assert len(list(f.keys())) == 2


def test_two_processes_filling_one_cache_encode_each_image_once(
    photos: list[Path], card: EncoderCard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = textwrap.dedent(f"""
        from pathlib import Path
        from capexp.backbones import resolve_encoder
        from capexp.data import ImageRef
        from capexp.backbones.feature_cache import encode_images
        refs = [ImageRef.from_file(Path(p)) for p in {[str(p) for p in photos]!r}]
        got = encode_images(resolve_encoder("efficientnet-lite0", (32, 32)), refs, batch_size=2, progress=False)
        assert got.features.shape == (6, 1280), got.features.shape
        print(got.n_encoded)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    encoded = 0
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
        encoded += int(out.decode().split()[-1])
    assert encoded == 6  # they took turns: each image was encoded by one process only
    got = encode_images(card, [_ref(p) for p in photos], progress=False)
    assert (got.n_encoded, got.n_cached) == (0, 6)
    monkeypatch.setenv("CAPEXP_CACHE", str(tmp_path / "other-cache"))
    alone = encode_images(card, [_ref(p) for p in photos], progress=False)
    torch.testing.assert_close(got.features, alone.features, rtol=2e-3, atol=2e-3)  # float16 on disk
