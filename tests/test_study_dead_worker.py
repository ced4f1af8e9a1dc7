"""A study worker killed in the middle of a trial: the trial is reaped and run again, its MLflow run
ends KILLED with Optuna's FAIL state, and multiprocessing prints no leaked-semaphore warning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna

from capexp.study import open_storage
from capexp.tracking import TAG_OPTUNA_STATE, TAG_STUDY, TAG_TRIAL

REPO = Path(__file__).resolve().parents[1]
ONE_EPOCH = [  # a trial takes seconds: 2 training steps and 4 validation images
    "training_config.num_epochs=1", "data_paths.num_train=16", "data_paths.num_val=4",
    "training_config.batch_size=8", "training_config.warmup_steps=0", "evaluation.coco_metrics=false",
    "evaluation.max_images=4", "evaluation.batch_size=8",
]


def _running_trial(storage: str, client: mlflow.MlflowClient) -> optuna.trial.FrozenTrial | None:
    """A trial whose worker is training (its MLflow run exists), if any yet."""
    if not Path(storage).exists():
        return None
    exp = client.get_experiment_by_name("capexp")
    for trial in optuna.load_study(study_name="dead", storage=open_storage(storage, "dead")).get_trials():
        if trial.state == optuna.trial.TrialState.RUNNING and exp is not None and client.search_runs(
                [exp.experiment_id], filter_string=f"tags.`{TAG_TRIAL}` = '{trial.number}'"):
            return trial
    return None


def test_a_killed_worker_is_reaped_its_run_fails_in_optuna_terms_and_no_semaphore_leaks(
    tmp_path: Path, tracking_uri: str
) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"objective": {"metric": "val_loss"}, "pruner": {"name": "none"},
                                 "params": {"training_config.learning_rate": {"choices": [1e-3, 2e-3]}}}))
    storage = str(tmp_path / "dead.journal")
    cmd = [sys.executable, "-c", "from capexp.cli import main; main()", "study", "--name", "dead", "--space", str(space),
           "--storage", storage, "--trials", "2", "--workers", "2", "--no-control", *[f"--set={s}" for s in ONE_EPOCH]]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    client = mlflow.MlflowClient(tracking_uri)
    with open(tmp_path / "study.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        try:
            while (victim := _running_trial(storage, client)) is None:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "study.log").read_text()[-3000:]
                time.sleep(0.3)
            os.kill(int(victim.user_attrs["capexp.worker"].rsplit(":", 2)[1]), signal.SIGKILL)
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = (tmp_path / "study.log").read_text()
    assert "leaked semaphore" not in output and "resource_tracker" not in output
    if code == 2:  # the other worker had ended before the kill: nobody was left to run the retry
        assert "worker" in output and "exited with code -9" in output, output[-3000:]
        again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        code, output = again.returncode, again.stdout + again.stderr
    assert code == 0, output[-3000:]
    trials = optuna.load_study(study_name="dead", storage=open_storage(storage, "dead")).get_trials()
    assert trials[victim.number].state == optuna.trial.TrialState.FAIL
    assert any(t.system_attrs.get("failed_trial") == victim.number and t.state.is_finished() for t in trials)
    exp = client.get_experiment_by_name("capexp").experiment_id
    killed = client.search_runs([exp], filter_string=f"tags.`{TAG_STUDY}` = 'dead' and tags.`{TAG_TRIAL}` = '{victim.number}'")
    assert [(r.info.status, r.data.tags.get(TAG_OPTUNA_STATE)) for r in killed] == [("KILLED", "FAIL")]
