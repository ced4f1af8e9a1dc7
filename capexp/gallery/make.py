"""`capexp gallery`: the page and the sheet written, and logged to the runs that made the captions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from capexp.errors import CapexpError, warn
from capexp.gallery.build import Gallery, build_gallery, write_sheet
from capexp.gallery.page import render

__all__ = ["ARTIFACT_GALLERY", "GalleryFiles", "make_gallery"]

ARTIFACT_GALLERY = "gallery"  # the folder of a run's artifacts that gets the page and the sheet


@dataclass
class GalleryFiles:
    """What `make_gallery` wrote and where it logged it."""

    page: Path
    sheet: Path | None
    gallery: Gallery
    logged_to: list[str]  # run ids that got the files as artifacts


def _log(files: list[Path], run_ids: list[str]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for run_id in run_ids:
        for file in files:
            client.log_artifact(run_id, str(file), artifact_path=ARTIFACT_GALLERY)


def make_gallery(
    images: str | Path,
    sources: list[str],
    output: Path,
    *,
    sheet: Path | None = None,
    blind: bool = False,
    seed: int = 0,
    log_artifacts: bool = True,
    **build: Any,
) -> GalleryFiles:
    """`build_gallery(images, sources, **build)`, written as the page `output` (and the scoring
    sheet `sheet`); both logged to every tracked run among the models unless `log_artifacts` is off."""
    if output.suffix.lower() not in (".html", ".htm"):
        raise CapexpError(f"--output {output}: the gallery is an HTML page; name it something.html.")
    gallery = build_gallery(images, sources, **build)
    if blind and sheet is None:
        warn("--blind without --sheet: the page is blind, but there is no sheet to score.")
    written = [sheet] if sheet is not None else []
    if sheet is not None:
        write_sheet(gallery, sheet, blind=blind, seed=seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(gallery, blind=blind, seed=seed), encoding="utf-8")
    run_ids = list(dict.fromkeys(m.run_id for m in gallery.models if m.run_id)) if log_artifacts else []
    _log([output, *written], run_ids)
    return GalleryFiles(output, sheet, gallery, run_ids)
