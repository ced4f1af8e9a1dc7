"""`capexp data`: fetch a public captioning data set into the layout its `data_paths.source` reads.

A data set is data: the archives it comes in (with mirrors and pinned checksums where they are
published), the files that must exist once it is unpacked, and how to arrange the unpacked files.
Downloads go to `<to>/.downloads/NAME.part`, resume with an HTTP Range request, are checked for
size and checksum, then unpacked into a temporary folder that is renamed into place only when
complete: a failure never leaves half a data set where a spec would read it.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from capexp.errors import CapexpError

__all__ = ["DataSet", "Remote", "DATASETS", "fetch_dataset"]

logger = logging.getLogger("capexp")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One archive of a data set: where to get it and, where known, its checksum."""

    filename: str
    urls: tuple[str, ...]  # tried in order (official host first, then mirrors)
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class DataSet:
    """A data set `capexp data NAME` can fetch, described as data."""

    name: str
    folder: str  # created under --to
    what: str
    size: str
    licence: str
    remotes: tuple[Remote, ...]
    required: tuple[str, ...]  # paths under `folder` that must exist once arranged
    arrange: Callable[[Path, Path], None]  # (unpacked archives, empty target folder)
    usage: Callable[[Path], str]  # the lines that point a spec at the fetched folder


# ---------------------------------------------------------------------------- arranging unpacked files
def _find(root: Path, name: str) -> Path | None:
    """The first file or folder called `name` under `root` (macOS resource forks ignored)."""
    hits = sorted(p for p in root.rglob(name) if "__MACOSX" not in p.parts)
    return hits[0] if hits else None


def _move_folder(root: Path, names: Sequence[str], target: Path) -> None:
    source = next((p for n in names if (p := _find(root, n)) is not None and p.is_dir()), None)
    if source is not None:
        source.rename(target)


def _arrange_flickr8k(unpacked: Path, target: Path) -> None:
    token = _find(unpacked, "Flickr8k.token.txt")
    if token is not None:
        text = target / "Flickr8k_text"
        text.mkdir()
        for f in token.parent.iterdir():
            if f.is_file():
                f.rename(text / f.name)
    _move_folder(unpacked, ("Flicker8k_Dataset", "Flickr8k_Dataset"), target / "Flicker8k_Dataset")


def _arrange_coco2017_val(unpacked: Path, target: Path) -> None:
    captions = _find(unpacked, "captions_val2017.json")
    if captions is not None:
        (target / "annotations").mkdir()
        captions.rename(target / "annotations" / captions.name)
    _move_folder(unpacked, ("val2017",), target / "val2017")


def _arrange_karpathy(unpacked: Path, target: Path) -> None:
    split = _find(unpacked, "dataset_coco.json")
    if split is not None:
        split.rename(target / split.name)
    for name in ("train2014", "val2014"):
        _move_folder(unpacked, (name,), target / name)


def _set_line(data_paths: str) -> str:
    return f"  capexp run SPEC --set 'data_paths={data_paths}'"


def _coco_usage(dest: Path) -> str:
    ann, images = dest / "annotations" / "captions_val2017.json", dest / "val2017"
    paths = (f'{{"source": "coco", "train_annotations": "{ann}", "train_images": "{images}", '
             f'"val_annotations": "{ann}", "val_images": "{images}", "val_fraction": 0.1}}')
    return "Train on 90% of val2017 and validate on the rest with:\n" + _set_line(paths)


def _karpathy_usage(dest: Path) -> str:
    paths = f'{{"source": "karpathy", "dataset_json": "{dest / "dataset_coco.json"}", "images_root": "{dest}"}}'
    return "Use the Karpathy split with:\n" + _set_line(paths)


def _flickr8k_usage(dest: Path) -> str:
    return ("Use it with (experiments/flickr8k.json reads ${CAPEXP_DATA}/flickr8k):\n"
            f"  export CAPEXP_DATA={dest.parent}\n"
            f"or\n  capexp run experiments/flickr8k.json --set data_paths.root={dest}")


_COCO = "http://images.cocodataset.org"
DATASETS: dict[str, DataSet] = {d.name: d for d in (
    DataSet(
        name="flickr8k", folder="flickr8k",
        what="Flickr8k: 8,091 photos, 5 captions each, official 6,000/1,000/1,000 split",
        size="1.1 GB download",
        licence="research use under the Flickr8k terms (Hodosh et al. 2013); photos keep their Flickr licences",
        remotes=(
            # MD5s as published with the mlverse torchdatasets Flickr8k loader.
            Remote("Flickr8k_Dataset.zip",
                   ("https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_Dataset.zip",),
                   md5="f18a1e2920de5bd84dae7cf08ec78978"),
            Remote("Flickr8k_text.zip",
                   ("https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/Flickr8k_text.zip",),
                   md5="bf6c1abcb8e4a833b7f922104de18627"),
        ),
        required=("Flicker8k_Dataset", "Flickr8k_text/Flickr8k.token.txt", "Flickr8k_text/Flickr_8k.trainImages.txt",
                  "Flickr8k_text/Flickr_8k.devImages.txt", "Flickr8k_text/Flickr_8k.testImages.txt"),
        arrange=_arrange_flickr8k, usage=_flickr8k_usage,
    ),
    DataSet(
        name="coco2017-val", folder="coco2017",
        what="COCO 2017 val: 5,000 photos, 25,014 captions (the captions_val2017.json file)",
        size="1.0 GB download (778 MB images + 241 MB annotations)",
        licence="annotations CC BY 4.0 (COCO Consortium); images under the Flickr terms of use",
        remotes=(
            # MD5s as published with torchvision-style COCO downloaders.
            Remote("val2017.zip", (f"{_COCO}/zips/val2017.zip",), md5="442b8da7639aecaf257c1dceb8ba8c80"),
            Remote("annotations_trainval2017.zip", (f"{_COCO}/annotations/annotations_trainval2017.zip",),
                   md5="f4bbac642086de4f52a3fdda2de5fa2c"),
        ),
        required=("annotations/captions_val2017.json", "val2017"),
        arrange=_arrange_coco2017_val, usage=_coco_usage,
    ),
    DataSet(
        name="coco2014-karpathy", folder="coco2014",
        what="COCO 2014 with the Karpathy split: 123,287 photos (113,287 train+restval / 5,000 val / 5,000 test)",
        size="19 GB download (13 GB train2014 + 6.2 GB val2014 + 36 MB split file)",
        licence="annotations CC BY 4.0; images under the Flickr terms of use; split file from Karpathy & Fei-Fei 2015",
        remotes=(
            Remote("caption_datasets.zip", (
                "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip",
                "https://huggingface.co/datasets/gpantaz/karpathy_split/resolve/main/caption_datasets.zip?download=true",
            )),
            Remote("train2014.zip", (f"{_COCO}/zips/train2014.zip",)),
            Remote("val2014.zip", (f"{_COCO}/zips/val2014.zip",)),
        ),
        required=("dataset_coco.json", "train2014", "val2014"),
        arrange=_arrange_karpathy, usage=_karpathy_usage,
    ),
)}


# ---------------------------------------------------------------------------- downloading
def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, remote: Remote, origin: str) -> None:
    """Raise when `path` does not match `remote`'s pinned checksums; the file is moved aside as `.corrupt`."""
    for algorithm in ("md5", "sha256"):
        expected = getattr(remote, algorithm)
        if expected and (got := _digest(path, algorithm)) != expected:
            bad = path.with_name(path.name + ".corrupt")
            if path.name.endswith(".part"):
                path.replace(bad)
                where = f"moved to {bad}, so the next run downloads it afresh"
            else:
                where = "left untouched"
            raise CapexpError(
                f"{origin}: {remote.filename} has {algorithm} {got}, expected {expected} (the file is {where}). "
                f"The download was corrupted or the host serves another file; run the command again, or pass "
                f"a good copy with --from."
            )


def _download_once(url: str, part: Path, progress: bool) -> None:
    """Append `url` to `part` from where it stops (HTTP Range); raise CapexpError when it ends short."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part is already whole
            return
        raise
    with response:
        if have and response.status != 206:  # the host ignored the Range request: start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        from tqdm import tqdm

        with open(part, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
            disable=not progress,
        ) as bar:
            try:
                while block := response.read(_CHUNK):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException):
                pass  # the size check below reports it
    size = part.stat().st_size
    if total is not None and size < total:
        raise CapexpError(
            f"The download of {url} stopped at {size:,} of {total:,} bytes; the partial file is kept at {part}. "
            f"Run the same command again to resume it."
        )


def _download(remote: Remote, downloads: Path, mirror: str | None, progress: bool) -> Path:
    """`remote` as a verified file in `downloads` (resuming `NAME.part`); tries each URL in turn."""
    final = downloads / remote.filename
    if final.is_file():
        return final
    part = downloads / (remote.filename + ".part")
    urls = (f"{mirror.rstrip('/')}/{remote.filename}",) if mirror else remote.urls
    errors = []
    for url in urls:
        logger.info("downloading %s", url)
        try:
            _download_once(url, part, progress)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
            continue
        _verify(part, remote, url)
        part.replace(final)
        return final
    kept = f" The partial file is kept at {part} for a resume." if part.exists() else ""
    raise CapexpError(
        f"Could not download {remote.filename} ({'; '.join(errors)}).{kept} Check the network and run the "
        f"command again, or download it yourself and pass it with --from {remote.filename}."
    )


# ---------------------------------------------------------------------------- unpacking
def _unpack(archive: Path, into: Path) -> None:
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(into)  # zipfile drops absolute paths and `..`
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                t.extractall(into, filter="data")
        else:
            raise CapexpError(f"{archive} is neither a zip nor a tar archive. Pass the data set's .zip or .tar(.gz) files.")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as e:
        raise CapexpError(f"{archive} could not be unpacked ({e}). Fetch it again (or pass a good copy with --from).") from None


def _missing(dataset: DataSet, folder: Path) -> list[str]:
    return [p for p in dataset.required if not (folder / p).exists()]


def _archives(dataset: DataSet, sources: Sequence[Path], downloads: Path, mirror: str | None, progress: bool) -> list[Path]:
    """The archives to unpack: the user's (`--from`, checked against pins when the name matches), else downloads."""
    if not sources:
        downloads.mkdir(parents=True, exist_ok=True)
        return [_download(r, downloads, mirror, progress) for r in dataset.remotes]
    pins = {r.filename: r for r in dataset.remotes}
    for source in sources:
        if not source.is_file():
            raise CapexpError(f"--from {source}: no such file. Pass an archive of the data set (.zip or .tar).")
        if source.name in pins:
            _verify(source, pins[source.name], f"--from {source}")
    return list(sources)


def fetch_dataset(
    name: str, to: Path, sources: Sequence[Path] = (), mirror: str | None = None,
    keep_archives: bool = False, progress: bool = True,
) -> Path:
    """Fetch data set `name` into `to/<folder>` and return that folder (already complete: returned as is)."""
    if name not in DATASETS:
        raise CapexpError(f"Unknown data set {name!r}. Choose one of: {', '.join(DATASETS)} (`capexp data` lists them).")
    dataset = DATASETS[name]
    to = Path(os.path.abspath(os.path.expanduser(to)))
    dest = to / dataset.folder
    if dest.exists():
        if missing := _missing(dataset, dest):
            raise CapexpError(
                f"{dest} exists but lacks {', '.join(missing)}. It is left untouched: move it away (or pass another "
                f"--to), then run the command again."
            )
        logger.info("%s is already complete in %s", name, dest)
        return dest
    to.mkdir(parents=True, exist_ok=True)
    downloads = to / ".downloads"
    archives = _archives(dataset, sources, downloads, mirror, progress)
    work = Path(tempfile.mkdtemp(prefix=f".{dataset.folder}-unpacking-", dir=to))
    try:
        for archive in archives:
            logger.info("unpacking %s", archive.name)
            _unpack(archive, work / "unpacked")
        (work / "ready").mkdir()
        dataset.arrange(work / "unpacked", work / "ready")
        if missing := _missing(dataset, work / "ready"):
            given = ", ".join(a.name for a in archives)
            raise CapexpError(
                f"The archives ({given}) do not hold {', '.join(missing)} of {name}. Pass every archive of the data "
                f"set with --from ({', '.join(r.filename for r in dataset.remotes)}), or drop --from to download them."
            )
        (work / "ready").rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not sources and not keep_archives:
        for archive in archives:
            archive.unlink()
    return dest
