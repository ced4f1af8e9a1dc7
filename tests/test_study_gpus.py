"""`capexp study --workers N --gpus LIST`: each spawned worker sees one GPU; no GPU is needed to check it."""

from __future__ import annotations

import multiprocessing
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from capexp.cli import cli
from capexp.errors import CapexpError
from capexp.study import gpus
from capexp.study.plan import StudyPlan
from capexp.study.space import load_space
from capexp.study.trials import run_workers


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """`machine(n)`: this process sees n GPUs (and no CUDA_VISIBLE_DEVICES of its own)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def set_count(n: int) -> None:
        monkeypatch.setattr(gpus, "device_count", lambda: n)

    return set_count


def _plan(devices: tuple[str, ...]) -> StudyPlan:
    return StudyPlan(name="g", storage=None, base="base.json", snapshot="base.json", space=load_space(), metric="cider",
                direction="maximize", num_epochs=1, trials=1, experiment="capexp", tracking_uri="sqlite:///unused.db",
                parent_run_id="p", heartbeat_interval=60, seed_offset=0, threads=0, log_level=0, gpus=devices)


def _spawned_envs(monkeypatch: pytest.MonkeyPatch, plan: StudyPlan, workers: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES as each worker process would start with it (processes are recorded, not run)."""
    seen: list[str | None] = []

    class Recorded:
        exitcode = 0
        pid = None

        def __init__(self, target, args, name) -> None:  # noqa: ANN001 - multiprocessing's signature
            self.index = args[1]

        def start(self) -> None:  # a spawned process copies the parent's environment as it starts
            seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))

        def join(self) -> None:
            pass

        def is_alive(self) -> bool:
            return False

    real = multiprocessing.get_context("spawn")

    class Context:
        Process = Recorded

        def SimpleQueue(self):  # noqa: N802 - multiprocessing's name
            return real.SimpleQueue()

        def RLock(self):  # noqa: N802 - multiprocessing's name
            return real.RLock()

    monkeypatch.setattr(multiprocessing, "get_context", lambda method: Context())
    assert run_workers(plan, workers) == []
    return seen


def test_worker_i_sees_gpu_i_mod_g(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(2)
    assert _spawned_envs(monkeypatch, _plan(gpus.choose_gpus(None)), 5) == ["0", "1", "0", "1", "0"]
    machine(4)
    assert _spawned_envs(monkeypatch, _plan(gpus.choose_gpus("0,2")), 3) == ["0", "2", "0"]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # the parent's own environment is left as it was


def test_without_a_gpu_workers_start_with_the_environment_unchanged(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(0)
    assert gpus.choose_gpus(None) == ()
    assert _spawned_envs(monkeypatch, _plan(()), 2) == [None, None]


def test_gpus_are_numbered_as_this_process_sees_them(machine, monkeypatch: pytest.MonkeyPatch) -> None:
    machine(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpus.choose_gpus(None) == ("3", "5")
    assert gpus.choose_gpus("1") == ("5",)


@pytest.mark.parametrize(("count", "option", "said"), [
    (2, "0,2", "GPU 2 does not exist; this machine shows 2 GPU(s), numbered 0 to 1"),
    (0, "0", "GPU 0 does not exist; this machine shows no GPU"),
    (2, "first", "give GPU numbers separated by commas"),
])
def test_gpus_naming_a_gpu_that_does_not_exist_is_refused(machine, count: int, option: str, said: str) -> None:
    machine(count)
    with pytest.raises(CapexpError, match=re.escape(said)):
        gpus.choose_gpus(option)


def test_cli_refuses_a_missing_gpu_in_one_line_before_anything_runs(machine, tmp_path: Path) -> None:
    machine(1)
    result = CliRunner().invoke(cli, ["study", "--trials", "1", "--name", "g", "--workers", "2", "--gpus", "0,1",
                                      "--storage", str(tmp_path / "g.journal")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: --gpus 0,1: GPU 1 does not exist; this machine shows 1 GPU(s), numbered 0 to 0. "
        "Name GPUs it has, or leave --gpus out."
    ]
    assert not (tmp_path / "g.journal").exists()  # nothing was created
