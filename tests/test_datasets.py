"""Data sources: Flickr8k and COCO layouts (built here, and the real files where present), the seed's caption lists, Karpathy JSON, subsets."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from capexp.data import ImageRef, Split, dataset_frame, load_data
from capexp.errors import CapexpError
from capexp.data.images import UnreadableImage
from capexp.spec.schema import CaptionListData, CocoData, Flickr8kData, KarpathyData, Spec, TrainingConfig
from capexp.spec.loading import load_spec


def _spec(data: object, subset_ratio: float = 1.0, seed: int = 0) -> Spec:
    return Spec(data_paths=data, training_config=TrainingConfig(subset_ratio=subset_ratio), seed=seed)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "capexp" and r.levelno == logging.WARNING]


def _png(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path)
    return path


def _split(n: int) -> Split:
    return Split([ImageRef(f"{i}.jpg", f"k{i}") for i in range(n)], [[f"caption {i}"] for i in range(n)])


# ---------------------------------------------------------------------------- flickr8k (real data)
def test_flickr8k_official_splits(shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    splits = load_data(_spec(Flickr8kData(source="flickr8k", root=str(shared_data / "flickr8k"))))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6000, 1000, 1000)
    for split in (splits.train, splits.val, splits.test):
        assert all(len(caps) == 5 for caps in split.captions)
    train_ids = {r.image_id for r in splits.train.images}
    val_ids = {r.image_id for r in splits.val.images}
    test_ids = {r.image_id for r in splits.test.images}
    assert not train_ids & val_ids and not train_ids & test_ids and not val_ids & test_ids
    assert not any(i.endswith(".1") for i in train_ids | val_ids | test_ids)  # the token file's stray key
    assert _warnings(caplog) == []  # every listed image exists
    first = splits.train.images[0]
    assert first.image_id == "2513260012_03d33305cf.jpg" and first.path is not None and first.path.is_absolute()
    assert splits.train.captions[0][0] == "A black dog is running after a white dog in the snow ."
    for ref in (first, splits.test.images[-1]):  # open only a couple of images
        image = ref.load()
        assert image.mode == "RGB" and image.size == (224, 224)


def test_flickr8k_layout_gives_the_listed_splits_with_five_captions(tiny_flickr8k: Path) -> None:
    splits = load_data(_spec(Flickr8kData(source="flickr8k", root=str(tiny_flickr8k))))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 3, 3)
    assert all(len(caps) == 5 for caps in splits.train.captions)
    listed = (tiny_flickr8k / "Flickr8k_text" / "Flickr_8k.devImages.txt").read_text().split()
    assert [r.image_id for r in splits.val.images] == listed


def test_flickr8k_val_split_test_validates_on_test(tiny_flickr8k: Path) -> None:
    splits = load_data(_spec(Flickr8kData(source="flickr8k", root=str(tiny_flickr8k), val_split="test")))
    assert splits.val.images == splits.test.images


def test_flickr8k_wrong_root_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(CapexpError, match=r"data_paths\.root"):
        load_data(_spec(Flickr8kData(source="flickr8k", root=str(tmp_path / "nowhere"))))


def test_flickr8k_root_expands_environment_variable(tiny_flickr8k: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPEXP_DATA", str(tiny_flickr8k.parent))
    splits = load_data(_spec(Flickr8kData(source="flickr8k"), subset_ratio=0.25))
    assert len(splits.train) == 3 and len(splits.val) == 3


# ---------------------------------------------------------------------------- coco (real file, partial download)
def _coco(root: Path, **kw: object) -> CocoData:
    ann = str(root / "annotations" / "captions_val2017.json")
    images = str(root / "val2017")
    return CocoData(source="coco", train_annotations=ann, train_images=images, val_annotations=ann, val_images=images, **kw)


@pytest.fixture
def tiny_coco(tmp_path: Path, make_photos) -> Path:
    """A COCO-layout folder: a captions file listing 10 images, of which the first 8 are in val2017/."""
    photos = make_photos(tmp_path / "coco" / "val2017", 10)
    images = [{"id": 100 + i, "file_name": p.name} for i, (p, _) in enumerate(photos)]
    annotations = [{"id": k, "image_id": 100 + i, "caption": c} for i, (_, caps) in enumerate(photos) for k, c in enumerate(caps)]
    for p, _ in photos[8:]:
        p.unlink()
    _caption_json(tmp_path / "coco" / "annotations" / "captions_val2017.json", {"images": images, "annotations": annotations})
    return tmp_path / "coco"


def test_coco_layout_keeps_present_images_with_one_warning(tiny_coco: Path, caplog: pytest.LogCaptureFixture) -> None:
    splits = load_data(_spec(_coco(tiny_coco)))
    assert len(splits.train) == 8 and all(len(caps) == 5 for caps in splits.train.captions)
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "2 of 10" in warnings[0] and "val2017" in warnings[0]


def test_coco_partial_download_keeps_present_images_with_one_warning(coco_sample: Path, caplog: pytest.LogCaptureFixture) -> None:
    splits = load_data(_spec(_coco(coco_sample)))
    assert len(splits.train) == 40
    assert all(r.path is not None and r.path.is_file() for r in splits.train.images)
    assert all(len(caps) >= 5 for caps in splits.train.captions)
    assert {r.image_id for r in splits.train.images} == set(os.listdir(coco_sample / "val2017"))
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "4,960 of 5,000" in warnings[0] and "val2017" in warnings[0]


def test_coco_val_fraction_holds_out_the_same_images_for_every_seed(tiny_coco: Path) -> None:
    a = load_data(_spec(_coco(tiny_coco, val_fraction=0.25), seed=1))
    b = load_data(_spec(_coco(tiny_coco, val_fraction=0.25), seed=2))
    assert (len(a.train), len(a.val)) == (6, 2)
    assert not {r.key for r in a.train.images} & {r.key for r in a.val.images}
    assert a.val.images == b.val.images
    assert a.test is None  # the val file is the train file: no separate test split


def test_coco_all_images_missing_is_an_error(tiny_coco: Path, tmp_path: Path) -> None:
    data = _coco(tiny_coco).model_copy(update={"train_images": str(tmp_path / "elsewhere")})
    with pytest.raises(CapexpError, match=r"None of the 10 images.*data_paths\.train_images"):
        load_data(_spec(data))


# ---------------------------------------------------------------------------- caption_list (the seed's format)
def _caption_json(path: Path, entries: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


def test_seed_config_caption_lists_group_captions_by_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As in the seed: image paths relative to the project folder (the CWD), JSON files under data/.
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "data" / "train2014" / "a.jpg")
    _png(tmp_path / "data" / "train2014" / "b.jpg")
    _png(tmp_path / "data" / "val2014" / "c.jpg")
    _caption_json(tmp_path / "data" / "train.json", [
        {"image": "data/train2014/a.jpg", "caption": "A dog runs. "},
        {"image": "data/train2014/b.jpg", "caption": "A cat  sleeps."},
        {"image": "data/train2014/a.jpg", "caption": "A brown dog."},
        {"image": "data/train2014/gone.jpg", "caption": "Never downloaded."},
        {"image": "data/train2014/b.jpg", "caption": "   "},
    ])
    _caption_json(tmp_path / "data" / "val.json", [{"image": "data/val2014/c.jpg", "caption": "A bird."}])
    spec_file = tmp_path / "seed.json"
    paths = {"train_captions_path": "data/train.json", "val_captions_path": "data/val.json"}
    spec_file.write_text(json.dumps({"data_paths": paths}))

    splits = load_data(load_spec(spec_file))

    assert [r.image_id for r in splits.train.images] == ["a.jpg", "b.jpg"]
    assert splits.train.captions == [["A dog runs.", "A brown dog."], ["A cat sleeps."]]
    assert splits.train.images[0].path == tmp_path / "data" / "train2014" / "a.jpg"
    assert [r.image_id for r in splits.val.images] == ["c.jpg"] and splits.test is None
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "1 of 3 images" in warnings[0]


def test_caption_list_paths_relative_to_json_folder_or_images_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "ds" / "img" / "a.png")
    _png(tmp_path / "photos" / "img" / "a.png", colour=(0, 0, 255))
    entries = [{"image": "img/a.png", "caption": "a picture"}]
    train = _caption_json(tmp_path / "ds" / "train.json", entries)
    near_json = CaptionListData(train_captions_path=str(train), val_captions_path=str(train))
    assert load_data(_spec(near_json)).train.images[0].path == tmp_path / "ds" / "img" / "a.png"
    rooted = near_json.model_copy(update={"images_root": "photos"})
    image = load_data(_spec(rooted)).train.images[0]
    assert image.path == tmp_path / "photos" / "img" / "a.png" and image.load().getpixel((0, 0)) == (0, 0, 255)


def test_caption_list_malformed_entry_names_file_and_entry(tmp_path: Path) -> None:
    bad = _caption_json(tmp_path / "train.json", [{"image": "a.jpg", "text": "wrong key"}])
    with pytest.raises(CapexpError, match=r"train\.json.*train_captions_path.*entry 0"):
        load_data(_spec(CaptionListData(train_captions_path=str(bad), val_captions_path=str(bad))))


# ---------------------------------------------------------------------------- karpathy
def _karpathy(tmp_path: Path) -> Path:
    rows = [("train", "t1"), ("train", "t2"), ("restval", "r1"), ("val", "v1"), ("test", "s1"), ("test", "s2")]
    images = []
    for split, name in rows:
        _png(tmp_path / "coco" / "val2014" / f"{name}.jpg")
        images.append({"filepath": "val2014", "filename": f"{name}.jpg", "split": split,
                       "sentences": [{"raw": f"{name} one", "tokens": []}, {"raw": f" {name} two ", "tokens": []}]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_karpathy_splits_and_restval(tmp_path: Path) -> None:
    data = KarpathyData(source="karpathy", dataset_json=str(_karpathy(tmp_path)), images_root=str(tmp_path / "coco"))
    splits = load_data(_spec(data))
    assert [r.image_id for r in splits.train.images] == ["t1.jpg", "t2.jpg", "r1.jpg"]
    assert [r.image_id for r in splits.val.images] == ["v1.jpg"]
    assert [r.image_id for r in splits.test.images] == ["s1.jpg", "s2.jpg"]
    assert splits.val.captions == [["v1 one", "v1 two"]]
    assert splits.train.images[0].path == tmp_path / "coco" / "val2014" / "t1.jpg"
    no_restval = load_data(_spec(data.model_copy(update={"include_restval": False, "val_split": "test"})))
    assert len(no_restval.train) == 2 and no_restval.val.images == no_restval.test.images


# ---------------------------------------------------------------------------- splits, keys, loading
def test_subset_is_reproducible_seed_dependent_and_ordered() -> None:
    split = _split(100)
    a, b, c = split.subset(0.1, seed=3), split.subset(0.1, seed=3), split.subset(0.1, seed=4)
    assert len(a) == 10 and a.images == b.images and a.images != c.images
    ids = [int(r.image_id.split(".")[0]) for r in a.images]
    assert ids == sorted(ids) and a.captions == [[f"caption {i}"] for i in ids]
    assert split.subset(1.0, seed=3) is split
    assert len(split.subset(0.001, seed=3)) == 1


def test_subset_ratio_samples_train_only(tmp_path: Path) -> None:
    data = KarpathyData(source="karpathy", dataset_json=str(_karpathy(tmp_path)), images_root=str(tmp_path / "coco"))
    splits = load_data(_spec(data, subset_ratio=0.34, seed=5))
    assert len(splits.train) == 1 and len(splits.val) == 1 and len(splits.test) == 2


def test_drop_removes_unreadable_images() -> None:
    split = _split(4).drop({1, 3})
    assert [r.image_id for r in split.images] == ["0.jpg", "2.jpg"] and split.captions == [["caption 0"], ["caption 2"]]


def test_corrupt_or_missing_image_is_unreadable(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    truncated = tmp_path / "truncated.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg")
    truncated.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    for path in (corrupt, truncated):
        with pytest.raises(UnreadableImage):
            ImageRef.from_file(path).load()
    missing = ImageRef.from_file(tmp_path / "full.jpg")
    (tmp_path / "full.jpg").unlink()
    with pytest.raises(UnreadableImage):
        missing.load()
    with pytest.raises(OSError):
        ImageRef.from_file(tmp_path / "full.jpg")


def test_file_key_follows_the_content_not_the_place_or_the_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset copied elsewhere or extracted again (new mtimes) keeps its feature-cache keys; an edited image
    gets a new one. A file is read for its digest only when it is new or changed."""
    from capexp.data import digests

    monkeypatch.setenv("CAPEXP_CACHE", str(tmp_path / "cache"))
    read = []
    monkeypatch.setattr(digests, "_digest", lambda path, _real=digests._digest: read.append(path) or _real(path))
    image = _png(tmp_path / "img" / "a.png")
    listing = _caption_json(tmp_path / "train.json", [{"image": "img/a.png", "caption": "x"}])
    data = CaptionListData(train_captions_path=str(listing), val_captions_path=str(listing))
    before = load_data(_spec(data)).train.images[0].key
    assert load_data(_spec(data)).train.images[0].key == before and read == [str(image)]  # the second time: remembered
    os.utime(image, ns=(1, 1))  # re-extracted: same bytes, another time
    assert load_data(_spec(data)).train.images[0].key == before and len(read) == 2
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "img", copy / "img")
    moved = CaptionListData(train_captions_path=str(listing), val_captions_path=str(listing), images_root=str(copy))
    assert load_data(_spec(moved)).train.images[0].key == before
    Image.new("RGB", (30, 30), (0, 0, 0)).save(image)
    assert load_data(_spec(data)).train.images[0].key != before


def test_dataset_frame_has_one_row_per_reference() -> None:
    split = Split([ImageRef("a.jpg", "ka"), ImageRef("b.jpg", "kb")], [["one", "two"], ["three"]])
    frame = dataset_frame(split)
    assert list(frame.columns) == ["image_id", "caption"]
    assert frame.values.tolist() == [["a.jpg", "one"], ["a.jpg", "two"], ["b.jpg", "three"]]
