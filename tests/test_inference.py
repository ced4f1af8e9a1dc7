"""`capexp caption`'s library: photo files captioned by several tracked runs into one CSV."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from capexp.errors import CapexpError
from capexp.model.checkpoint import find_checkpoint, load_captioner
from capexp.serving.folder import caption_folder, list_images
from capexp.tracking import experiment_runs, find_run, resolve_model_source, run_checkpoint, use_store

# 12 optimizer steps per run (3 epochs of 4): enough that captions are words, not an immediate EOS
LONGER = ("training_config.num_epochs=3", "data_paths.num_train=32")
NAMES = ["tiny-a", "tiny-b", "tiny-c"]


@pytest.fixture(scope="module")
def runs(quickstart_runs) -> Iterator[tuple[str, list[str]]]:
    """Three tiny quickstart runs (different seeds) in one SQLite store: (store uri, run ids)."""
    with quickstart_runs(NAMES, *LONGER) as made:
        yield made


@pytest.fixture
def photos(make_photos, tmp_path: Path) -> Path:
    """40 photos (38 as JPEG, one each as PNG and WebP), a corrupt .jpg and a text file."""
    folder = tmp_path / "photos"
    sources = [p for p, _ in make_photos(folder, 40)]
    for src, suffix in ((sources[38], ".png"), (sources[39], ".webp")):
        Image.open(src).save(src.with_suffix(suffix))
        src.unlink()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_three_runs_caption_forty_photos_with_one_encoding(runs, photos, tmp_path, monkeypatch, caplog) -> None:
    import capexp.backbones.feature_cache

    uri, ids = runs
    calls = []
    real = capexp.backbones.feature_cache.encode_images

    def spy(card, images, **kwargs):
        result = real(card, images, **kwargs)
        calls.append(result)
        return result

    monkeypatch.setattr(capexp.backbones.feature_cache, "encode_images", spy)
    checkpoints = [find_checkpoint(run_id, tracking_uri=uri) for run_id in ids]
    out = tmp_path / "out" / "captions.csv"
    with caplog.at_level(logging.WARNING, logger="capexp"):
        result = caption_folder(photos, checkpoints, out, batch_size=16)

    rows = _read(out)
    assert list(rows[0]) == ["image_id", "model_name", "caption"]
    assert len(rows) == 120 and result.images == 40
    expected = sorted(p.name for p in photos.iterdir() if p.name not in ("broken.jpg", "notes.txt"))
    assert [r["image_id"] for r in rows[::3]] == expected
    assert {r["model_name"] for r in rows} == set(NAMES)
    assert all(r["caption"].strip() for r in rows)
    assert [name for name, _ in result.skipped] == ["broken.jpg"]
    assert "broken.jpg" in caplog.text
    # the three runs share one encoder: it ran once, over the 41 candidate files (photos with the bytes of
    # another test's, which make_photos draws alike, come from the shared feature cache)
    assert len(calls) == 1 and calls[0].n_encoded + calls[0].n_cached == 40

    again = caption_folder(photos, checkpoints[:1], tmp_path / "again.csv", batch_size=16)
    assert calls[1].n_cached == 40 and calls[1].n_encoded == 0  # a second call reads the feature cache
    assert [r["caption"] for r in _read(tmp_path / "again.csv")] == [r["caption"] for r in rows[::3]]
    assert again.images == 40

    # as one ensemble: two copies of a run caption as that run; three runs give one model_name
    pair = caption_folder(photos, [checkpoints[0], checkpoints[0]], tmp_path / "pair.csv", batch_size=16, ensemble=True)
    assert pair.models == ["tiny-a#1+tiny-a#2"]
    assert [r["caption"] for r in _read(tmp_path / "pair.csv")] == [r["caption"] for r in rows[::3]]
    caption_folder(photos, checkpoints, tmp_path / "three.csv", batch_size=16, ensemble=True)
    three = _read(tmp_path / "three.csv")
    assert len(three) == 40 and {r["model_name"] for r in three} == {"tiny-a+tiny-b+tiny-c"}
    assert all(r["caption"].strip() for r in three)


def test_every_source_kind_loads_the_same_model(runs, make_photos, tmp_path) -> None:
    uri, ids = runs
    use_store(uri)
    photo = Image.open(make_photos(tmp_path, 1)[0][0])
    by_id = load_captioner(ids[1], tracking_uri=uri)
    by_name = load_captioner("tiny-b", tracking_uri=uri)
    by_folder = load_captioner(run_checkpoint(ids[1], "tiny-b"))
    assert by_id.name == by_name.name == by_folder.name == "tiny-b"
    captions = {c.caption_images([photo])[0] for c in (by_id, by_name, by_folder)}
    assert len(captions) == 1
    assert experiment_runs("capexp", tracking_uri=uri) == ids  # oldest first
    assert find_run("tiny-c", "capexp") == ids[2]
    by_run, by_path = resolve_model_source("tiny-b", tracking_uri=uri), resolve_model_source(run_checkpoint(ids[1], "tiny-b"))
    assert by_run.folder == by_path.folder and by_run.tracked_run("capexp evaluate") == ids[1]
    with pytest.raises(CapexpError, match="capexp evaluate logs to the model's run"):
        by_path.tracked_run("capexp evaluate")  # a folder names no run to log to


def test_bad_sources_and_folders_say_what_to_fix(runs, tmp_path) -> None:
    uri, _ = runs
    with pytest.raises(CapexpError, match="no run is named 'no-such-run'"):
        find_checkpoint("no-such-run", tracking_uri=uri)
    with pytest.raises(CapexpError, match="capexp register"):
        find_checkpoint("models:/never-registered@champion", tracking_uri=uri)
    with pytest.raises(CapexpError, match="not a capexp checkpoint"):
        find_checkpoint(tmp_path)
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(CapexpError, match="holds no image files"):
        list_images(tmp_path)
    with pytest.raises(CapexpError, match="no such experiment"):
        experiment_runs("missing", tracking_uri=uri)


def test_caption_skips_a_decompression_bomb_and_fails_on_a_folder_of_nothing_readable(runs, make_photos, tmp_path) -> None:
    """A 48 KB 20000x20000 PNG among photos is skipped as unreadable (the photos are captioned); a folder
    where nothing is readable exits 2 with the reasons and writes no CSV."""
    from click.testing import CliRunner

    from capexp.cli import cli

    uri, ids = runs
    folder = tmp_path / "photos"
    make_photos(folder, 2)
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")
    out = tmp_path / "captions.csv"
    result = CliRunner().invoke(cli, ["caption", str(folder), "--run", ids[0], "--output", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "1 unreadable files skipped" in result.output
    assert sorted(row["image_id"] for row in _read(out)) == ["1000_shapes.jpg", "1001_shapes.jpg"]

    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (folder / "bomb.png").rename(nothing / "bomb.png")
    (nothing / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.csv"
    result = CliRunner().invoke(cli, ["caption", str(nothing), "--run", ids[0], "--output", str(empty), "--tracking-uri", uri])
    assert result.exit_code == 2
    assert "none of its 2 image files could be read" in result.stderr and "DecompressionBombError" in result.stderr
    assert not empty.exists()
