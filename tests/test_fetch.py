"""`capexp data`: fetch, resume, refuse bad downloads, and point a spec at the result.

The archives are built here from generated photos and served from 127.0.0.1 by a small HTTP
server that honours Range requests and can cut a response short.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from capexp.data import fetch
from capexp.cli import cli
from capexp.data import load_data
from capexp.spec.schema import Flickr8kData, Spec

REPO = Path(__file__).resolve().parents[1]


class _Host:
    """Files served by name from 127.0.0.1; `cut[name] = n` ends that response after n bytes."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.cut, self.ranges = files, {}, []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                name = self.path.lstrip("/")
                if name not in host.files:
                    self.send_error(404)
                    return
                body, start = host.files[name], 0
                if (header := self.headers.get("Range")) is not None:
                    host.ranges.append((name, header))
                    start = int(header.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:host.cut.get(name, len(body))])

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _zip(path: Path, root: Path, members: list[Path]) -> bytes:
    with zipfile.ZipFile(path, "w") as z:
        for m in members:
            z.write(m, m.relative_to(root))
    return path.read_bytes()


@pytest.fixture
def host(tiny_flickr8k: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Host]:
    """Flickr8k's two archives (built from the tiny layout) on a local host, pinned by their MD5s."""
    images = sorted((tiny_flickr8k / "Flicker8k_Dataset").iterdir())
    texts = sorted((tiny_flickr8k / "Flickr8k_text").iterdir())
    files = {
        "Flickr8k_Dataset.zip": _zip(tmp_path / "a.zip", tiny_flickr8k, images),
        "Flickr8k_text.zip": _zip(tmp_path / "b.zip", tiny_flickr8k / "Flickr8k_text", texts),  # files at the top
    }
    served = _Host(files)
    remotes = tuple(fetch.Remote(n, (f"{served.url}/{n}",), md5=hashlib.md5(b).hexdigest()) for n, b in files.items())
    monkeypatch.setitem(fetch.DATASETS, "flickr8k", dataclasses.replace(fetch.DATASETS["flickr8k"], remotes=remotes))
    yield served
    served.server.shutdown()


def _data(*args: str):
    return CliRunner().invoke(cli, ["data", "flickr8k", *args])


def _leftovers(to: Path) -> list[str]:
    return sorted(p.name for p in to.iterdir() if p.name.startswith(".flickr8k-unpacking"))


def test_fetch_unpacks_the_layout_and_prints_how_to_use_it(host: _Host, tmp_path: Path) -> None:
    to = tmp_path / "data"
    result = _data("--to", str(to))
    assert result.exit_code == 0, result.output
    assert f"export CAPEXP_DATA={to}" in result.output
    assert f"--set data_paths.root={to / 'flickr8k'}" in result.output
    splits = load_data(Spec(data_paths=Flickr8kData(source="flickr8k", root=str(to / "flickr8k"))))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 3, 3)
    assert list((to / ".downloads").iterdir()) == [] and _leftovers(to) == []  # archives removed once unpacked
    again = _data("--to", str(to))  # already complete: nothing fetched again
    assert again.exit_code == 0 and len(host.ranges) == 0


def test_partial_download_resumes_where_it_stopped(host: _Host, tmp_path: Path) -> None:
    to = tmp_path / "data"
    body = host.files["Flickr8k_Dataset.zip"]
    host.cut["Flickr8k_Dataset.zip"] = 1000
    stopped = _data("--to", str(to))
    assert stopped.exit_code == 2
    message = " ".join(stopped.output.split())
    assert f"stopped at 1,000 of {len(body):,} bytes" in message and "Run the same command again to resume" in message
    part = to / ".downloads" / "Flickr8k_Dataset.zip.part"
    assert part.read_bytes() == body[:1000]  # the partial file is kept
    assert not (to / "flickr8k").exists() and _leftovers(to) == []

    del host.cut["Flickr8k_Dataset.zip"]
    resumed = _data("--to", str(to))
    assert resumed.exit_code == 0, resumed.output
    assert host.ranges == [("Flickr8k_Dataset.zip", "bytes=1000-")]  # only the rest was asked for
    assert len(list((to / "flickr8k" / "Flicker8k_Dataset").iterdir())) == 18


def test_wrong_checksum_is_refused_and_nothing_is_unpacked(host: _Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = fetch.DATASETS["flickr8k"]
    bad = (dataclasses.replace(dataset.remotes[0], md5="0" * 32), dataset.remotes[1])
    monkeypatch.setitem(fetch.DATASETS, "flickr8k", dataclasses.replace(dataset, remotes=bad))
    to = tmp_path / "data"
    result = _data("--to", str(to))
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "Flickr8k_Dataset.zip has md5" in message and f"expected {'0' * 32}" in message
    assert (to / ".downloads" / "Flickr8k_Dataset.zip.part.corrupt").is_file()  # moved aside: the next run starts afresh
    assert not (to / "flickr8k").exists() and _leftovers(to) == []


def test_from_archive_then_run_the_flickr8k_spec_with_the_printed_line(
    tiny_flickr8k: Path, tmp_path: Path, tracking_uri: str
) -> None:
    archive = tmp_path / "flickr8k-copy.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(tiny_flickr8k, arcname="my-download")
    to = tmp_path / "data"
    fetched = _data("--from", str(archive), "--to", str(to))
    assert fetched.exit_code == 0, fetched.output
    assert archive.is_file()  # the user's archive is never touched
    printed = next(line.strip() for line in fetched.output.splitlines() if "--set data_paths.root=" in line)
    root = printed.split("--set data_paths.root=")[1]

    small = ["training_config.num_epochs=1", "training_config.batch_size=8", "training_config.warmup_steps=0",
             "evaluation.coco_metrics=false", "training_config.best_metric=val_loss", "clip_config.image_size=[64,64]",
             "id=from-archive"]
    args = ["run", str(REPO / "experiments" / "flickr8k.json"), "--set", f"data_paths.root={root}"]
    ran = CliRunner().invoke(cli, [*args, *[a for s in small for a in ("--set", s)]])
    assert ran.exit_code == 0, ran.output
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("capexp").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["data_paths.root"] == root
    # 12 train + 3 dev photos (another test's copies of them may be in the shared feature cache already)
    assert run.data.metrics["images_encoded"] + run.data.metrics["images_cached"] == 15


def test_incomplete_archive_or_target_is_reported_and_left_alone(tiny_flickr8k: Path, tmp_path: Path) -> None:
    images_only = tmp_path / "images.zip"
    _zip(images_only, tiny_flickr8k, sorted((tiny_flickr8k / "Flicker8k_Dataset").iterdir()))
    to = tmp_path / "data"
    result = _data("--from", str(images_only), "--to", str(to))
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert "do not hold Flickr8k_text/Flickr8k.token.txt" in message and "Flickr8k_text.zip" in message
    assert not (to / "flickr8k").exists() and _leftovers(to) == []

    shutil.copytree(tiny_flickr8k / "Flicker8k_Dataset", to / "flickr8k" / "Flicker8k_Dataset")
    clash = _data("--from", str(images_only), "--to", str(to))
    assert clash.exit_code == 2 and "left untouched" in " ".join(clash.output.split())
    assert sorted(p.name for p in (to / "flickr8k").iterdir()) == ["Flicker8k_Dataset"]


def test_unknown_data_set_lists_the_known_ones() -> None:
    result = CliRunner().invoke(cli, ["data", "imagenet"])
    assert result.exit_code == 2 and "flickr8k, coco2017-val, coco2014-karpathy" in result.output
    listing = CliRunner().invoke(cli, ["data"])
    assert listing.exit_code == 0 and "CC BY 4.0" in listing.output and "1.1 GB" in listing.output
