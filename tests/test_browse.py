"""What a person sees of quickstart runs: the MLflow UI (training view, system metrics), the caption
gallery in headless Chromium, and the human-scoring sheet's round trip to `compare --ranking`."""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from rich.console import Console

from capexp.cli import cli
from capexp.compare import compare
from capexp.errors import CapexpError
from capexp.gallery import make_gallery
from capexp.evaluation.human_scores import COLUMNS, import_scores
from capexp.tracking import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, experiment_id, use_store
from capexp.tracking.system import ENV_SYSTEM_METRICS, system_metrics
from capexp.tracking.ui import ui_command, ui_url

REPO = Path(__file__).resolve().parents[1]
# six validation images in the gallery; 12 optimizer steps per run (3 epochs of 4), so captions are words
LONGER = ("training_config.num_epochs=3", "data_paths.num_train=32", "data_paths.num_val=6", "evaluation.max_images=6")
NAMES = ["quick-a", "quick-b"]
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's `chromium` is not on PATH here (apt-get install chromium; CI's .ci/install does)"
)


@pytest.fixture(scope="module")
def runs(quickstart_runs) -> Iterator[tuple[str, list[str]]]:
    """Two tiny quickstart runs (seeds 0 and 1) with system metrics sampled five times a second: (store uri, run ids)."""
    env = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2", ENV_SYSTEM_METRICS: None}  # a tiny run lasts seconds
    with quickstart_runs(NAMES, *LONGER, env=env) as made:
        yield made


@pytest.fixture
def browser() -> Iterator[object]:
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _watch(page) -> list[str]:
    """Console errors and uncaught exceptions of `page`, as they happen."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    return errors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_are_training_runs_with_system_metrics(runs, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, ids = runs
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("capexp")
    assert exp.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND == "custom_model_development"
    for run_id in ids:
        run = client.get_run(run_id)
        assert "system/cpu_utilization_percentage" in run.data.metrics, sorted(run.data.metrics)
        assert "system/system_memory_usage_megabytes" in run.data.metrics
        assert client.get_metric_history(run_id, "system/cpu_utilization_percentage")

    # an experiment made elsewhere gets the tag when capexp logs to it; another kind is left alone
    use_store(uri)
    bare = client.create_experiment("made-elsewhere")
    genai = client.create_experiment("genai-app", tags={TAG_EXPERIMENT_KIND: "genai_development"})
    assert experiment_id("made-elsewhere", create=False) == bare
    assert TAG_EXPERIMENT_KIND not in client.get_experiment(bare).tags  # looking up never writes
    experiment_id("made-elsewhere"), experiment_id("genai-app")
    assert client.get_experiment(bare).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND
    assert client.get_experiment(genai).tags[TAG_EXPERIMENT_KIND] == "genai_development"

    # --no-system-metrics turns it off for this process and the study workers it starts
    monkeypatch.delenv(ENV_SYSTEM_METRICS, raising=False)
    assert system_metrics()
    result = CliRunner().invoke(cli, ["run", "--no-system-metrics", str(REPO / "experiments" / "missing.json")])
    assert result.exit_code == 2
    assert not system_metrics()


@pytest.mark.slow
@needs_chromium
def test_mlflow_ui_opens_the_runs_in_the_training_view(runs, browser, tmp_path: Path) -> None:
    uri, ids = runs
    port = _free_port()
    server = subprocess.Popen(ui_command(uri, "127.0.0.1", port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the MLflow UI did not start"
                time.sleep(0.5)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(ui_url(uri, "127.0.0.1", port))
        for name in NAMES:
            page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
        page.get_by_text("2 matching runs").wait_for(timeout=10_000)
        page.screenshot(path=str(tmp_path / "mlflow_ui.png"))
        text = page.inner_text("body")
        # the runs table of the training view, not the GenAI overview of traces and token usage
        assert "Runs" in text and "Model training" in text
        assert "Token Usage" not in text and "Evaluation runs" not in text and "Overview" not in text
    finally:
        server.terminate()  # cleanup, not the subject (test_signals.py checks that `capexp ui` stops)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@needs_chromium
def test_gallery_in_chromium_shows_every_image_and_caption_and_sorts(runs, browser, tmp_path: Path) -> None:
    uri, ids = runs
    made = make_gallery("val", ids, tmp_path / "gallery.html", metric="bleu4", tracking_uri=uri)
    g = made.gallery
    assert [m.name for m in g.models] == NAMES and len(g.images) == 6 and g.metric == "bleu4"
    assert made.logged_to == ids
    assert "gallery/gallery.html" in {a.path for a in MlflowClient(uri).list_artifacts(ids[0], "gallery")}
    html = made.page.read_text()
    assert "http://" not in html and "https://" not in html and "src=\"data:image/jpeg;base64," in html

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors = _watch(page)
    page.goto(made.page.as_uri())
    images = page.locator("tbody img")
    assert images.count() == 6
    for i in range(6):
        images.nth(i).scroll_into_view_if_needed()
        assert images.nth(i).is_visible()
    assert page.eval_on_selector_all("tbody img", "els => els.every(e => e.complete && e.naturalWidth > 0)")
    for r, captions in enumerate(g.captions):
        cells = page.locator(f'tbody tr[data-index="{r}"] td.caption')
        for m, caption in enumerate(captions):
            assert cells.nth(m).is_visible() and cells.nth(m).inner_text().startswith(caption)
        best = page.locator(f'tbody tr[data-index="{r}"] td.caption.best')
        top = round(max(g.scores[r]), 3)
        assert best.count() == (sum(round(x, 3) == top for x in g.scores[r]) if top > 0 else 0)

    def column(attr: str) -> list[str]:
        return page.eval_on_selector_all("tbody tr", f"rows => rows.map(r => r.dataset.{attr})")

    assert column("image") == sorted(column("image"))
    page.select_option("#sort", "best:desc")
    best = [float(v) for v in column("best")]
    assert best == sorted(best, reverse=True)
    page.click('th[data-key="m1"]')  # a click on a model's column: its scores, highest first
    m1 = [float(v) for v in column("m1")]
    assert m1 == sorted(m1, reverse=True) and page.input_value("#sort") == "m1:desc"
    page.click('th[data-key="image"]')
    assert column("image") == sorted(column("image"))
    page.click('th[data-key="image"]')
    assert column("image") == sorted(column("image"), reverse=True)
    page.fill("#filter", g.images[2].image_id)
    assert page.locator("tbody tr:not(.hidden)").count() == 1 and page.inner_text("#count") == "1 of 6 images"
    page.screenshot(path=str(tmp_path / "gallery.png"), full_page=True)
    assert errors == []


def test_scoring_sheet_round_trip(runs, tmp_path: Path) -> None:
    uri, ids = runs
    sheet = tmp_path / "sheet.csv"
    made = make_gallery("val", ids, tmp_path / "blind.html", sheet=sheet, blind=True, seed=1, log_artifacts=False,
                        metric="bleu4", tracking_uri=uri)
    assert made.logged_to == []
    page = made.page.read_text()
    assert not any(name in page for name in NAMES) and "caption 2" in page  # the page names no model either
    with sheet.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 12
    assert all(r["score"] == "" for r in rows) and {r["model_name"] for r in rows} == set(ids)
    orders = [tuple(r["model_name"] for r in rows[i : i + 2]) for i in range(0, 12, 2)]
    assert len(set(orders)) == 2  # shuffled per image: both orders occur
    captions = {(r["image_id"], r["model_name"]): r["caption"] for r in rows}
    assert all(captions[(ref.image_id, ids[m])] == made.gallery.captions[i][m]
               for i, ref in enumerate(made.gallery.images) for m in range(2))

    with pytest.raises(CapexpError, match=r"12 row\(s\) have no score yet: rows 2, 3, 4,.* 13\. Fill each"):
        import_scores(sheet, tracking_uri=uri)

    # a person scores: quick-a's captions 2, quick-b's 1
    for r in rows:
        r["score"] = "2" if r["model_name"] == ids[0] else "1"
    with sheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    result = import_scores(sheet, tracking_uri=uri)
    assert sorted((r.run_name, r.total, r.images) for r in result.runs) == [(NAMES[0], 12, 6), (NAMES[1], 6, 6)]
    md = compare(NAMES, ranking=True, fmt="md", tracking_uri=uri, console=Console(file=io.StringIO()))
    assert "| 1 | quick-a | 12 | 100% |" in md and "| 2 | quick-b | 6 | 50% |" in md


def test_gallery_of_a_folder_through_the_cli(runs, shared_data: Path, tmp_path: Path) -> None:
    uri, ids = runs
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted((shared_data / "coco2017_sample" / "val2017").glob("*.jpg"))[:3]:
        shutil.copy(src, photos / src.name)
    out = tmp_path / "folder.html"
    runner = CliRunner()
    result = runner.invoke(cli, ["gallery", str(photos), "--run", NAMES[0], "--run", ids[1], "--output", str(out),
                                 "--sheet", str(tmp_path / "sheet.csv"), "--no-log", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "3 images x 2 models" in result.output
    page = out.read_text()
    assert page.count("<img ") == 3 and "references" not in page and "best" not in page.split("<tbody>")[1]
    assert len((tmp_path / "sheet.csv").read_text().splitlines()) == 1 + 6
    bad = runner.invoke(cli, ["gallery", "nowhere", "--run", NAMES[0], "--output", str(out), "--tracking-uri", uri])
    assert bad.exit_code == 2 and "neither a folder nor a split" in bad.stderr
