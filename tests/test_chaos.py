"""Chaos: a 2-worker study survives SIGKILLed workers and reruns with nothing lost, duplicated
or left RUNNING, an intact MLflow SQLite store and a bit-identical feature cache
(benchmarks/chaos_study.py, smaller)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from chaos_study import run_chaos  # noqa: E402


@pytest.mark.slow
def test_study_survives_killed_workers(tmp_path: Path) -> None:
    figures = run_chaos(tmp_path / "chaos", trials=5, interval=5.0, max_kills=3, seed=1)
    print(figures)
    assert figures["problems"] == []
    assert figures["kills"] >= 2 and figures["complete"] + figures["pruned"] == 5
    assert figures["integrity"] == "ok"
