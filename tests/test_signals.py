"""Stopping commands from outside: SIGTERM, SIGHUP and Ctrl-C end `capexp run`, `capexp study` and
`capexp ui` cleanly, with nothing left RUNNING and no process left behind (real processes, real signals)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.json"
# the tiny quickstart's one-step epochs, many of them: the run is surely inside training when the signal comes
SLOW = "training_config.num_epochs=500"


def _capexp(args: list[str], tmp_path: Path, uri: str, log: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": uri, "TOKENIZERS_PARALLELISM": "false"}
    out = (tmp_path / log).open("w")
    return subprocess.Popen([sys.executable, "-c", "from capexp.cli import main; main()", *args], cwd=tmp_path,
                            env=env, stdout=out, stderr=subprocess.STDOUT, **kwargs)


def _wait_for(condition, proc: subprocess.Popen, log: Path, seconds: float = 480) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"exited {proc.returncode} early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def _runs(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("capexp")
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _training(log: Path, runs: int = 1) -> bool:
    """Whether `runs` runs have started training (their features encoded, the spec logged)."""
    return log.read_text().count("trainable /") >= runs


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_a_signal_ends_the_run_killed_with_what_it_logged(tracking_uri: str, tmp_path: Path, signum: int, code: int, tiny) -> None:
    proc = _capexp(["run", str(QUICKSTART), *tiny.args(SLOW)], tmp_path, tracking_uri, "run.log")
    _wait_for(lambda: _training(tmp_path / "run.log"), proc, tmp_path / "run.log")
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == code, (tmp_path / "run.log").read_text()[-3000:]
    (run,) = _runs(tracking_uri)
    assert run.info.status == "KILLED"
    artifacts = {a.path for a in mlflow.MlflowClient(tracking_uri).list_artifacts(run.info.run_id)}
    assert {"run.log", "spec.json"} <= artifacts  # everything logged so far is kept
    assert mlflow.MlflowClient(tracking_uri).get_run(run.info.run_id).data.params  # the spec's values
    assert f"interrupted ({signal.Signals(signum).name})" in (tmp_path / "run.log").read_text()


def test_a_stop_python_wraps_in_another_error_still_ends_the_run_killed(tracking_uri: str, tiny,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal that lands inside `__set_name__` (during an import, say) reaches the run as a RuntimeError
    raised from `Stopped` on Python 3.11: the run still ends KILLED and the stop goes on up."""
    import capexp.training.cross_entropy as cross_entropy
    from capexp.stopping import Stopped

    class Probe:
        def __set_name__(self, owner: type, name: str) -> None:
            raise Stopped(signal.SIGTERM)

    def train(*args, **kwargs):
        type("Owner", (), {"probe": Probe()})

    monkeypatch.setattr(cross_entropy, "train_cross_entropy", train)
    with pytest.raises(Stopped):
        tiny.run(tracking_uri=tracking_uri)
    (run,) = _runs(tracking_uri)
    assert run.info.status == "KILLED"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_two_worker_study_with_nothing_left_running(tracking_uri: str, tmp_path: Path, signum: int, tiny) -> None:
    """One signal to the study command (SIGINT: as Ctrl-C, to its whole process group) stops both
    workers; their trials end FAIL with a retry queued, their runs and the parent run KILLED."""
    import optuna

    from capexp.study import open_storage

    # -v: the workers' runs log to the console too (a study shows only its progress lines otherwise)
    proc = _capexp(["-v", "study", "--spec", str(QUICKSTART), "--trials", "4", "--workers", "2", "--name", "stop",
                    "--no-control", *tiny.args(SLOW)], tmp_path, tracking_uri, "study.log", start_new_session=True)
    try:
        _wait_for(lambda: _training(tmp_path / "study.log", 2), proc, tmp_path / "study.log")
    except AssertionError:
        os.killpg(proc.pid, signal.SIGKILL)  # leave nothing running behind a failed test
        raise
    workers = psutil.Process(proc.pid).children(recursive=True)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # what a terminal's Ctrl-C does
    else:
        proc.send_signal(signum)  # `kill`, `timeout`, `docker stop`: the command only
    assert proc.wait(timeout=180) == 128 + signum, (tmp_path / "study.log").read_text()[-3000:]
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []
    runs = _runs(tracking_uri)
    assert [r.info.status for r in runs if r.info.status not in ("KILLED", "FINISHED")] == []
    assert [r.info.status for r in runs if r.data.tags.get("capexp.study_role") == "parent"] == ["KILLED"]
    trials = optuna.load_study(study_name="stop", storage=open_storage(str(tmp_path / "studies" / "stop.journal"), "stop")).trials
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and states.count("FAIL") == 2 and states.count("WAITING") == 2
    retried = sorted(t.system_attrs["failed_trial"] for t in trials if t.state.name == "WAITING")
    assert retried == sorted(t.number for t in trials if t.state.name == "FAIL")  # each stopped trial runs again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_to_capexp_ui_stops_the_mlflow_server_and_its_workers(tracking_uri: str, tmp_path: Path) -> None:
    proc = _capexp(["ui", "--port", str(_free_port())], tmp_path, tracking_uri, "ui.log")
    started: list[psutil.Process] = []

    def serving() -> bool:  # the server and its job consumers all started
        started[:] = psutil.Process(proc.pid).children(recursive=True)
        return "Uvicorn running" in (tmp_path / "ui.log").read_text() and len(started) >= 4

    try:
        _wait_for(serving, proc, tmp_path / "ui.log")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
        _, alive = psutil.wait_procs(started, timeout=30)
        assert [p.cmdline() for p in alive] == []
    finally:
        for p in [*started, psutil.Process(proc.pid)] if proc.poll() is None else started:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_stop_dropped_inside_a_finaliser_still_ends_the_run_at_its_next_step(tracking_uri: str, tiny) -> None:
    """Python drops an exception raised in a finaliser; a signal landing there must not leave the run training
    (later signals are ignored while stopping), so the next training step raises it again."""
    from capexp.stopping import Stopped, stop_on_signals

    class Finaliser:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGTERM)  # the handler's Stopped is raised here, and dropped

    with stop_on_signals():
        Finaliser()  # dropped at once: its __del__ runs, the stop is lost
        with pytest.raises(Stopped) as stopped:
            tiny.run(tracking_uri=tracking_uri)
    assert stopped.value.signum == signal.SIGTERM
    (run,) = _runs(tracking_uri)
    assert run.info.status == "KILLED"
