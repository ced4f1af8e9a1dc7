"""The control trial (the base spec's own values of the searched keys, run first) inside and outside
the search space, and a dead worker's run ended KILLED with Optuna's FAIL state."""

from __future__ import annotations

import io
import json
import socket
import subprocess
from pathlib import Path

import mlflow
import optuna
import pytest
from rich.console import Console

from capexp.compare import compare
from capexp.study import open_storage, run_study
from capexp.tracking import TAG_OPTUNA_STATE, TAG_STUDY, TAG_TRIAL

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "quickstart.json"  # learning rate 0.001, 4 visual tokens
ONE_EPOCH = [  # a trial takes seconds: 2 training steps and 4 validation images
    "training_config.num_epochs=1", "data_paths.num_train=16", "data_paths.num_val=4",
    "training_config.batch_size=8", "training_config.warmup_steps=0", "evaluation.coco_metrics=false",
    "evaluation.max_images=4", "evaluation.batch_size=8",
]


def _space(tmp_path: Path, learning_rates: list[float]) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps({
        "objective": {"metric": "val_loss"}, "pruner": {"name": "none"},
        "params": {"training_config.learning_rate": {"choices": learning_rates},
                   "gpt2_config.visual_tokens_length": {"choices": [2, 4]}},
    }))
    return path


def _children(uri: str, name: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("capexp")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_STUDY}` = '{name}'")
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_a_control_inside_the_space_is_the_first_trial_and_the_sampler_learns_from_it(
    tmp_path: Path, tracking_uri: str, capfd: pytest.CaptureFixture[str]
) -> None:
    storage = str(tmp_path / "in.journal")
    run_study(BASE, trials=2, name="inside", space=_space(tmp_path, [1e-3, 1e-9]), storage=storage, overrides=ONE_EPOCH)

    trials = optuna.load_study(study_name="inside", storage=open_storage(storage, "inside")).get_trials()
    assert trials[0].user_attrs.get("capexp.control") is True  # an ordinary trial, first, that TPE sees
    assert trials[0].params == {"training_config.learning_rate": 1e-3, "gpt2_config.visual_tokens_length": 4}
    assert len(trials) == 2 and not trials[1].user_attrs.get("capexp.control")
    children = _children(tracking_uri, "inside")
    control = [c for c in children if c.data.tags.get("capexp.control") == "true"]
    assert len(children) == 2 and [c.data.tags[TAG_TRIAL] for c in control] == ["0"]
    assert control[0].info.run_name == "inside-control"
    err = capfd.readouterr().err
    assert "trial 0 (control) val_loss" in err and "trial 1 val_loss" in err
    text = compare(study="inside", fmt="md", tracking_uri=tracking_uri, console=Console(file=io.StringIO()))
    rows = {row.split(" | ")[0].strip("|* "): row for row in text.split("\n\n")[0].splitlines()[2:]}
    assert "control" in rows["0"] and "control" not in rows["1"]


def test_a_control_outside_the_space_is_a_run_of_its_own_and_no_control_skips_it(
    tmp_path: Path, tracking_uri: str, capfd: pytest.CaptureFixture[str]
) -> None:
    space = _space(tmp_path, [1e-2, 1e-9])  # the base's 0.001 is not among them
    storage = str(tmp_path / "out.journal")
    run_study(BASE, trials=1, name="outside", space=space, storage=storage, overrides=ONE_EPOCH)

    trials = optuna.load_study(study_name="outside", storage=open_storage(storage, "outside")).get_trials()
    assert len(trials) == 1 and not trials[0].user_attrs.get("capexp.control")  # the sampler never sees it
    children = _children(tracking_uri, "outside")
    control = [c for c in children if c.data.tags.get("capexp.control") == "true"]
    assert len(children) == 2 and len(control) == 1 and TAG_TRIAL not in control[0].data.tags
    assert control[0].data.params["training_config.learning_rate"] == "0.001"
    assert control[0].info.status == "FINISHED" and "val_loss" in control[0].data.metrics
    assert "control (outside the space) val_loss" in capfd.readouterr().err
    text = compare(study="outside", fmt="md", tracking_uri=tracking_uri, console=Console(file=io.StringIO()))
    rows = text.split("\n\n")[0].splitlines()[2:]
    assert len(rows) == 2 and rows[-1].startswith("| — |") and "| control |" in rows[-1]  # last, on a row of its own

    again = run_study(BASE, trials=1, name="outside", space=space, storage=storage, overrides=ONE_EPOCH)
    assert again.complete == 1 and len(_children(tracking_uri, "outside")) == 2  # a rerun runs it no more

    run_study(BASE, trials=1, name="bare", space=space, storage=str(tmp_path / "bare.journal"), overrides=ONE_EPOCH,
              control=False)
    assert [c.data.tags.get("capexp.control") for c in _children(tracking_uri, "bare")] == [None]


def test_a_dead_workers_run_ends_killed_with_optuna_state_fail(tmp_path: Path, tracking_uri: str) -> None:
    from capexp.study.liveness import reap
    from capexp.study.plan import StudyPlan

    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    storage = open_storage(str(tmp_path / "dead.journal"), "dead")
    study = optuna.create_study(study_name="dead", storage=storage)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0.0, 1.0)})
    trial.set_user_attr("capexp.worker", f"{socket.gethostname()}:{gone.pid}:1")
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.create_experiment("capexp")
    parent = client.create_run(exp, tags={TAG_STUDY: "dead"}).info.run_id
    run = client.create_run(exp, tags={TAG_STUDY: "dead", TAG_TRIAL: str(trial.number),
                                       "mlflow.parentRunId": parent}).info.run_id
    plan = StudyPlan(name="dead", storage=None, base="b", snapshot="s", space=None,  # type: ignore[arg-type]
                     metric="val_loss", direction="minimize", num_epochs=1, trials=1, experiment="capexp",
                     tracking_uri=tracking_uri, parent_run_id=parent, heartbeat_interval=60, seed_offset=0,
                     threads=0, log_level=20)
    reap(study, storage, plan)

    assert study.get_trials()[0].state == optuna.trial.TrialState.FAIL
    assert [t.state for t in study.get_trials()[1:]] == [optuna.trial.TrialState.WAITING]  # queued to run again
    killed = client.get_run(run)
    assert killed.info.status == "KILLED" and killed.data.tags[TAG_OPTUNA_STATE] == "FAIL"
    found = client.search_runs([exp], filter_string=f"tags.`{TAG_OPTUNA_STATE}` = 'FAIL'")
    assert [r.info.run_id for r in found] == [run]  # filtering by Optuna's state finds it


def test_a_conditional_param_is_searched_only_where_its_condition_holds(tmp_path: Path, tracking_uri: str) -> None:
    space = tmp_path / "when.json"
    space.write_text(json.dumps({
        "objective": {"metric": "val_loss"}, "pruner": {"name": "none"},
        "sampler": {"name": "tpe", "n_startup_trials": 10},
        "params": {"clip_config.features": {"choices": ["pooled", "grid"]},
                   # regions needs grid features: alone in the space, half of all trials would be invalid specs
                   "gpt2_config.mapper": {"choices": ["regions"], "when": {"clip_config.features": ["grid"]}}},
    }))
    storage = str(tmp_path / "when.journal")
    run_study(BASE, trials=5, name="when", space=space, storage=storage, overrides=ONE_EPOCH)

    trials = optuna.load_study(study_name="when", storage=open_storage(storage, "when")).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5  # no invalid combination ran
    assert trials[0].params == {"clip_config.features": "pooled"}  # the control: the base's own values
    for t in trials:
        grid = t.params["clip_config.features"] == "grid"
        assert ("gpt2_config.mapper" in t.params) == grid, t.params
    assert {t.params["clip_config.features"] for t in trials} == {"pooled", "grid"}
    runs = {c.data.tags[TAG_TRIAL]: c.data.params for c in _children(tracking_uri, "when")}
    for t in trials:  # each run trained with the mapper its features call for
        assert runs[str(t.number)]["gpt2_config.mapper"] == ("regions" if "gpt2_config.mapper" in t.params else "mlp")


def test_workers_of_studies_with_neighbouring_seeds_draw_different_values() -> None:
    from types import SimpleNamespace

    from capexp.study.space import TpeSampler
    from capexp.study.trials import _sampler

    def first_draw(seed: int, worker: int) -> float:
        plan = SimpleNamespace(space=SimpleNamespace(sampler=TpeSampler(seed=seed, n_startup_trials=5)), seed_offset=0)
        study = optuna.create_study(sampler=_sampler(plan, worker))
        return study.ask().suggest_float("lr", 0.0, 1.0)

    assert first_draw(0, 1) != first_draw(1, 0)  # a second worker is not the next study's first
    assert first_draw(0, 0) == first_draw(0, 0) != first_draw(0, 1)
