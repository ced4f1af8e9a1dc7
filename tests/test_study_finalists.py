"""Finalists at full budget: the best trial and the control retrained with several seeds, resumed
after a kill, the winner and the fidelity check on the parent run and in `capexp compare --study`;
and the refusal when no trial completed."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import statistics
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
from click.testing import CliRunner
from rich.console import Console

from capexp.cli import cli
from capexp.compare import compare
from capexp.spec.loading import flatten, load_spec
from capexp.study import open_storage, run_study
from capexp.study.finalists import fidelity_sentence, rank_correlations
from capexp.tracking import TAG_OPTUNA_STATE, TAG_STUDY

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "quickstart.json"  # learning rate 0.001, 4 visual tokens
FULL = [  # the full budget: 2 epochs of 2 training steps, 4 validation images
    "training_config.num_epochs=2", "data_paths.num_train=16", "data_paths.num_val=4",
    "training_config.batch_size=8", "training_config.warmup_steps=0", "evaluation.coco_metrics=false",
    "evaluation.max_images=4", "evaluation.batch_size=8",
]
SPACE = {
    "objective": {"metric": "val_loss"}, "pruner": {"name": "none"},
    "budget": {"training_config.num_epochs": 1},  # trials run one epoch; finalists the base's two
    "params": {"training_config.learning_rate": {"choices": [1e-3, 3e-3]},
               "gpt2_config.visual_tokens_length": {"choices": [2, 4]}},
}


def _finalist_runs(uri: str, name: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("capexp")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_STUDY}` = '{name}'")
    return [r for r in runs if "capexp.finalist" in r.data.tags]


def _parent(uri: str, name: str) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("capexp")
    query = f"tags.`{TAG_STUDY}` = '{name}' and tags.`capexp.study_role` = 'parent'"
    return client.search_runs([exp.experiment_id], filter_string=query)[0]


def _kill(client: mlflow.MlflowClient, runs: list[mlflow.entities.Run]) -> tuple[str, str]:
    """One finalist run ended KILLED (Ctrl-C), one left RUNNING by a process that died (SIGKILL)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    stopped, dead = runs[0].info.run_id, runs[-1].info.run_id
    client.set_terminated(stopped, "KILLED")
    client.update_run(dead, status="RUNNING")
    client.set_tag(dead, "capexp.worker", f"{socket.gethostname()}:{gone.pid}:1")
    return stopped, dead


def test_finalists_retrain_at_full_budget_resume_after_a_kill_and_pick_a_winner(
    tmp_path: Path, tracking_uri: str
) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    storage = str(tmp_path / "f.journal")
    args = dict(trials=2, name="fin", space=space, storage=storage, overrides=FULL, finalists=1, finalist_seeds=2,
                workers=2)
    first = run_study(BASE, **args)
    client = mlflow.MlflowClient(tracking_uri)
    runs = _finalist_runs(tracking_uri, "fin")
    assert all(f":{os.getpid()}:" not in r.data.tags["capexp.worker"] for r in runs)  # run by the worker processes
    trials = optuna.load_study(study_name="fin", storage=open_storage(storage, "fin")).get_trials()
    assert trials[0].user_attrs.get("capexp.control")  # the base's values are inside the space: trial 0
    pairs = sorted((r.data.tags["capexp.finalist"], r.data.tags["capexp.finalist_seed"]) for r in runs)
    assert pairs == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]  # the best other trial and the control, seeds 0, 1
    assert all(r.data.params["training_config.num_epochs"] == "2" for r in runs)  # without the space's budget
    assert {r.data.params["seed"] for r in runs} == {"0", "1"}
    assert any("winner:" in line for line in first.finalists)

    stopped, dead = _kill(client, runs)
    run_study(BASE, **{**args, "workers": 1})  # the two runs again, in this process (no workers to start)

    after = _finalist_runs(tracking_uri, "fin")
    assert len(after) == 6  # the two stopped ones ran again; the finished ones did not
    finished = [(r.data.tags["capexp.finalist"], r.data.tags["capexp.finalist_seed"]) for r in after
                if r.info.status == "FINISHED"]
    assert sorted(finished) == pairs
    assert client.get_run(stopped).info.status == "KILLED"
    assert client.get_run(dead).info.status == "KILLED" and client.get_run(dead).data.tags[TAG_OPTUNA_STATE] == "FAIL"

    parent = _parent(tracking_uri, "fin")
    means = {n: parent.data.metrics[f"finalist.{n}.mean"] for n in ("0", "1")}
    for n, mean in means.items():
        values = [min(m.value for m in client.get_metric_history(r.info.run_id, "val_loss")) for r in after
                  if r.info.status == "FINISHED" and r.data.tags["capexp.finalist"] == n]
        assert mean == pytest.approx(statistics.fmean(values))
        assert parent.data.metrics[f"finalist.{n}.sd"] == pytest.approx(statistics.stdev(values))
    assert parent.data.tags["capexp.winner"] == min(means, key=means.get)  # val_loss: lowest mean wins
    assert "fidelity.spearman" in parent.data.metrics and "fidelity.kendall" in parent.data.metrics
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    minutes = sum(r.info.end_time - r.info.start_time for r in children) / 60_000  # trials and finalists, killed ones too
    assert parent.data.metrics["worker_minutes"] == pytest.approx(minutes)
    assert 0 < parent.data.metrics["encode_minutes"] < minutes

    text = compare(study="fin", tracking_uri=tracking_uri, console=Console(file=io.StringIO(), width=80))
    assert "Finalists at full budget" in text and "winner" in text and "Spearman" in text and "worker-minutes" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "0 (control)" in text

    best = CliRunner().invoke(cli, ["study", "--name", "fin", "--storage", storage, "--best-spec",
                                    *[a for s in FULL for a in ("--set", s)]])
    assert best.exit_code == 0, best.output
    path = tmp_path / "winner.json"
    path.write_text(best.output)
    flat = flatten(load_spec(path))
    winner = trials[int(parent.data.tags["capexp.winner"])]
    assert {k: flat[k] for k in winner.params} == winner.params and flat["training_config.num_epochs"] == 2
    _one_run_left_runs_in_this_process(client, runs[1], {a.info.run_id for a in after}, args, tracking_uri)


def _one_run_left_runs_in_this_process(client: mlflow.MlflowClient, run: mlflow.entities.Run, earlier: set[str],
                                       args: dict, tracking_uri: str) -> None:
    """A resume with one finalist run left runs it in the study's process: no worker is spawned to wait for it."""
    client.set_terminated(run.info.run_id, "KILLED")
    run_study(BASE, **args)
    tags = {k: run.data.tags[k] for k in ("capexp.finalist", "capexp.finalist_seed")}
    (again,) = [r for r in _finalist_runs(tracking_uri, "fin") if r.info.run_id not in earlier
                and {k: r.data.tags[k] for k in tags} == tags]
    assert again.info.status == "FINISHED" and f":{os.getpid()}:" in again.data.tags["capexp.worker"]


def test_finalists_of_a_study_without_a_complete_trial_are_refused_and_the_study_is_kept(
    tmp_path: Path, tracking_uri: str
) -> None:
    space = tmp_path / "grid.json"  # a learning rate of 1e6 diverges: the only trial fails
    space.write_text(json.dumps({"objective": {"metric": "val_loss"}, "sampler": {"name": "grid"},
                                 "pruner": {"name": "none"}, "params": {"training_config.learning_rate": {"choices": [1e6]}}}))
    storage = str(tmp_path / "n.journal")
    common = ["study", "--name", "none", "--space", str(space), "--storage", storage, "--trials", "1",
              *[a for s in [*FULL, "training_config.num_epochs=1"] for a in ("--set", s)]]
    bad = CliRunner().invoke(cli, [*common, "--finalists", "0"])
    assert bad.exit_code == 2 and "--finalists and --finalist-seeds must be 1 or more" in bad.output
    assert not Path(storage).exists()

    result = CliRunner().invoke(cli, [*common, "--no-control", "--finalists", "1"])
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "study none has no complete trial" in error[0]
    parent = _parent(tracking_uri, "none")
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_failed"] == 1  # the search is kept
    assert _finalist_runs(tracking_uri, "none") == []


def test_rank_correlations_and_the_fidelity_sentence() -> None:
    # by hand: one swapped pair of four, Spearman 1 - 6 * 2 / (4 * 15) = 0.8, Kendall (5 - 1) / 6
    # 0.8 on 4 points: 4 of the 24 orders of the second list rank at least as well
    assert rank_correlations([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx({"spearman": 0.8, "kendall": 4 / 6,
                                                                               "spearman_p": 4 / 24})
    assert rank_correlations([1, 2], [5, 5]) == {}  # a constant side: no correlation to speak of
    assert rank_correlations([1], [2]) == {}
    assert "treat the search's order as a hint" in fidelity_sentence(0.4, 6)
    assert "held at full budget" in fidelity_sentence(0.9, 6)
    assert "too few" in fidelity_sentence(1.0, 2)
    assert "untested" in fidelity_sentence(None, 1)
    assert "(a random order of the 6 ranks as well 6.8% of the time)" in fidelity_sentence(0.71, 6, 0.068)


@pytest.mark.parametrize("n", [6, 12])
def test_the_spearman_p_value_is_scipys_permutation_test(n: int) -> None:
    """Exact on 6 points (720 orders), a seeded sample of orders on 12; ties ranked as averages."""
    from scipy import stats

    rng = np.random.default_rng(n)
    x, y = rng.integers(0, 5, n).astype(float), rng.normal(size=n)
    y += 0.3 * x  # somewhat correlated (p about 0.1), with ties in x
    expected = stats.permutation_test((y,), lambda v: stats.spearmanr(x, v).statistic, permutation_type="pairings",
                                      alternative="greater", n_resamples=2_000, rng=1).pvalue
    assert rank_correlations(x, y)["spearman_p"] == pytest.approx(expected, abs=0.04 if n > 8 else 1e-9)
