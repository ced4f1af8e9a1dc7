"""The store contract, once per backend: every MLflow store capexp logs runs to (SQLite, a file store,
PostgreSQL) and every Optuna storage it keeps studies in (a journal file, PostgreSQL) gives back what
capexp wrote, and a study there is shared by two workers, outlives a dead worker and resumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from optuna.trial import TrialState

from capexp.cli import cli
from capexp.errors import CapexpError
from capexp.spec.loading import flatten, load_spec
from capexp.study import TAG_STUDY_ROLE, open_storage, run_study
from capexp.tracking import ATTR_WORKER, TAG_STUDY, experiment_runs, find_run, run_checkpoint

SPACE = {"objective": {"metric": "val_loss"}, "pruner": {"name": "none"},
         "params": {"gpt2_config.visual_tokens_length": {"choices": [2, 4]}}}


@pytest.fixture(params=["sqlite", "file", "postgresql"])
def run_store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty MLflow store of each kind, exported as MLFLOW_TRACKING_URI."""
    if request.param == "sqlite":
        return request.getfixturevalue("tracking_uri")
    if request.param == "file":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store unless asked
        uri = (tmp_path / "mlruns").as_uri()
    else:
        uri = request.getfixturevalue("postgres")(f"runs_{uuid.uuid4().hex[:8]}")
        monkeypatch.chdir(tmp_path)  # MLflow keeps a database store's artifacts in ./mlruns
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(params=["journal", "postgresql"])
def study_storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh Optuna storage of each kind, as `capexp study --storage` takes it."""
    if request.param == "journal":
        return str(tmp_path / "shared.journal")
    return request.getfixturevalue("postgres")(f"studies_{uuid.uuid4().hex[:8]}")


def test_a_run_is_logged_found_by_name_and_read_back(run_store: str, tiny) -> None:
    result = tiny.run("id=kept", "notes=one tiny run")

    assert find_run("kept", "capexp") == result.run_id == experiment_runs("capexp", tracking_uri=run_store)[0]
    client = MlflowClient(run_store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "kept"
    assert run.data.params["gpt2_config.visual_tokens_length"] == "4" and run.data.params["data_paths.num_train"] == "8"
    assert run.data.tags["mlflow.note.content"] == "one tiny run" and "capexp.spec_hash" in run.data.tags
    # one epoch's value (a file store lists it twice: once more as the logged model's, which SQLite merges)
    history = {(m.step, m.value) for m in client.get_metric_history(result.run_id, "val_loss")}
    assert history == {(1, run.data.metrics["val_loss"])} and run.data.metrics["best_val_loss"] == run.data.metrics["val_loss"]
    assert {"spec.json", "curves.png", "run.log"} <= {a.path for a in client.list_artifacts(result.run_id)}
    checkpoint = run_checkpoint(result.run_id, "kept")
    assert {p.name for p in checkpoint.iterdir()} == {"model.safetensors", "capexp.json"}
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == result.run_id


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(storage, name)).get_trials()


def _leave_a_dead_workers_trial(storage: str, name: str) -> int:
    """A trial left RUNNING by a worker that died: in a journal file, a process of this machine that is
    gone; in a database, a worker on another machine whose heartbeat stopped. Returns its number."""
    opened = open_storage(storage, name, heartbeat_interval=2)
    trial = optuna.create_study(study_name=name, storage=opened, direction="minimize").ask()
    if "://" in storage:
        trial.set_user_attr(ATTR_WORKER, "another-machine:1:1")
        opened.record_heartbeat(trial._trial_id)
    else:
        gone = subprocess.Popen(["true"])
        gone.wait()
        trial.set_user_attr(ATTR_WORKER, f"{socket.gethostname()}:{gone.pid}:1")
    return trial.number


def _study_runs(uri: str, name: str) -> tuple[str, list[str]]:
    """The study's parent run id and its children's statuses."""
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("capexp").experiment_id], f"tags.`{TAG_STUDY}` = '{name}'")
    (parent,) = [r for r in runs if r.data.tags.get(TAG_STUDY_ROLE) == "parent"]
    assert parent.info.status == "FINISHED"
    return parent.info.run_id, [r.info.status for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


def test_a_study_is_shared_by_two_workers_survives_a_dead_one_and_resumes(
    study_storage: str, tracking_uri: str, tiny, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    lost = _leave_a_dead_workers_trial(study_storage, "shared")
    args = dict(base=tiny.base, name="shared", space=space, storage=study_storage, overrides=tiny.sets(), heartbeat_interval=2)

    first = run_study(trials=2, workers=2, **args)

    trials = _trials(study_storage, "shared")
    assert trials[lost].state == TrialState.FAIL  # the dead worker's trial, failed and run again once
    (retried,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost]
    assert retried.state == TrialState.COMPLETE
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == first.complete and 2 <= first.complete <= 3  # two workers may both start the last trial
    workers = {t.user_attrs[ATTR_WORKER] for t in done}
    assert len({w.rsplit(":", 2)[1] for w in workers}) == 2 and str(os.getpid()) not in str(workers)
    parent, children = _study_runs(tracking_uri, "shared")
    assert parent == first.parent_run_id and children.count("FINISHED") == len(done)
    err = capfd.readouterr().err  # the spawned workers' console: one progress line per trial, not Optuna's own
    assert sum(line.startswith("trial ") for line in err.splitlines()) == len(done), err
    assert "finished with value" not in err and "INFO mlflow" not in err and "epoch 1/1" not in err

    again = run_study(trials=len(done) + 1, **args)  # resumed: one trial more, the others kept as they were
    resumed = _trials(study_storage, "shared")
    assert [(t.state, t.value) for t in resumed[:len(trials)]] == [(t.state, t.value) for t in trials]
    assert again.complete == len(done) + 1 and again.parent_run_id == first.parent_run_id
    best = CliRunner().invoke(cli, ["study", "--name", "shared", "--storage", study_storage, "--best-spec"])
    assert best.exit_code == 0, best.output
    (tmp_path / "best.json").write_text(best.output)
    assert {k: flatten(load_spec(tmp_path / "best.json"))[k] for k in again.best_params} == again.best_params


def test_an_unreachable_database_is_a_clear_error_without_its_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CapexpError, match=r"cannot open the study database") as err:
        open_storage(f"postgresql://capexp:secret@127.0.0.1:{port}/none", "x")
    assert "secret" not in str(err.value)


def test_a_file_store_without_mlflows_opt_in_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set: capexp says so in one paragraph
    with the two ways out (exit 2), instead of MLflow's traceback from deep inside the first run."""
    from click.testing import CliRunner

    from capexp.cli import cli

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    result = CliRunner().invoke(cli, ["compare", "--tracking-uri", f"file://{tmp_path}/mlruns"])
    assert result.exit_code == 2
    assert "is a file store" in result.stderr and "MLFLOW_ALLOW_FILE_STORE=true" in result.stderr
    assert "sqlite:///" in result.stderr and "Traceback" not in result.output
