"""The documentation site: the spec reference matches the models, and `mkdocs build --strict` passes
(no broken link, anchor or image)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capexp.spec.reference import spec_reference

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_spec_reference_is_what_the_models_generate() -> None:
    committed = (REPO / "docs" / "spec-reference.md").read_text()
    assert committed == spec_reference(), (
        "docs/spec-reference.md differs from the spec models: regenerate it with "
        "`python -m capexp.spec.reference > docs/spec-reference.md` and commit it")


def test_the_spec_reference_names_every_key_with_its_default() -> None:
    page = spec_reference()
    for row in ("| `clip_config.image_size` | [integer, integer] | `[224, 224]` |",
                "| `training_config.scst.samples` | integer, ≥ 2 | `5` | captions sampled per image and step |",
                "| `data_paths.root` | string | `\"${CAPEXP_DATA:-../shared/data}/flickr8k\"` |"):
        assert row in page


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        reason = "docs: mkdocs-material is not installed (pip install -e '.[docs]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}. CI=true requires it, so the site is checked.")
        pytest.skip(reason)
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (site / "index.html").is_file() and (site / "spec-reference" / "index.html").is_file()
    assert (site / "results" / "f8k-plots" / "param_importances.png").is_file()
