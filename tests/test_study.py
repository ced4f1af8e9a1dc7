"""Studies end to end on tiny generated data: MLflow nesting and pruning, the plots and report a study
leaves, a study run again, a killed worker, failing and diverging trials, `--keep-models`, `--best-spec`, progress lines,
the Optuna dashboard, and errors raised before any trial runs. (Each storage, several workers and a dead
worker's trial: test_stores.py.)"""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from click.testing import CliRunner
from rich.console import Console

from capexp.cli import cli
from capexp.compare import compare
from capexp.spec.loading import flatten, load_spec
from capexp.study import TAG_STUDY_ROLE, TAG_TRIAL, open_storage, run_study
from capexp.errors import CapexpError
from capexp.tracking import TAG_PRUNED, TAG_STUDY, run_checkpoint

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "quickstart.json"
TWO_STEPS = "data_paths.num_train=16"  # two optimizer steps per epoch: a diverging loss is nan within epoch 1
TWO_EPOCHS = "training_config.num_epochs=2"  # the pruner acts after epoch 1
# A learning rate of 1e-9 learns nothing: such trials are clearly worse, epoch by epoch.
SPACE = {
    "objective": {"metric": "val_loss"},
    "pruner": {"name": "median", "n_startup_trials": 2},
    "params": {
        "training_config.learning_rate": {"choices": [1e-3, 1e-9]},
        "gpt2_config.visual_tokens_length": {"choices": [2, 4]},
    },
}
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate", "intermediate_values")


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(storage, name)).get_trials()


def _states(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    return sorted(t.state.name for t in trials)


def _runs(uri: str, name: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("capexp")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_STUDY}` = '{name}'")
    parents = [r for r in runs if r.data.tags.get(TAG_STUDY_ROLE) == "parent"]
    assert len(parents) == 1, "one parent run per study, reused on resume"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1
    return parents[0], children


def _trials_table(client: mlflow.MlflowClient, parent_run_id: str) -> list[dict[str, str]]:
    """The parent run's `trials.csv`: one row per trial."""
    return list(csv.DictReader(io.StringIO(Path(client.download_artifacts(parent_run_id, "trials.csv")).read_text())))


@dataclass
class Nest:
    uri: str
    storage: str
    space: Path
    queued: list[Path]
    summary: object


@pytest.fixture(scope="module")
def nest(shared_store, tiny, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nest]:
    """Study `nest`, run once for the module: four queued trials, of which the two with learning rate 1e-9
    fall behind the median after epoch 1 and are pruned."""
    folder = tmp_path_factory.mktemp("nest")
    space = folder / "space.json"
    space.write_text(json.dumps(SPACE))
    queued = []
    for i, (lr, k) in enumerate([(1e-3, 2), (1e-3, 4), (1e-9, 2), (1e-9, 4)]):
        path = folder / f"queued{i}.json"
        path.write_text(json.dumps({"id": f"queued-{i}", "training_config": {"learning_rate": lr},
                                    "gpt2_config": {"visual_tokens_length": k}}))
        queued.append(path)
    storage = str(folder / "s.journal")
    with shared_store() as uri:
        summary = run_study(BASE, trials=4, name="nest", space=space, storage=storage, enqueue=queued,
                            overrides=tiny.sets(TWO_STEPS, TWO_EPOCHS), control=False)
        yield Nest(uri, storage, space, queued, summary)


def test_study_is_a_parent_run_with_trial_children_pruned_ones_marked(nest: Nest) -> None:
    trials, summary = _trials(nest.storage, "nest"), nest.summary
    # Trials 0 and 1 set the median; the 1e-9 trials fall behind it after epoch 1 and are pruned.
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert [len(t.intermediate_values) for t in trials] == [2, 2, 1, 1]
    assert (summary.complete, summary.pruned, summary.failed) == (2, 2, 0)
    assert summary.metric == "val_loss" and summary.direction == "minimize"
    assert summary.best_params["training_config.learning_rate"] == 1e-3

    parent, children = _runs(nest.uri, "nest")
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.run_name for c in children) == ["queued-0", "queued-1", "queued-2", "queued-3"]
    pruned = {c.data.tags[TAG_TRIAL] for c in children if c.data.tags.get(TAG_PRUNED) == "true"}
    assert pruned == {"2", "3"}
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.data.params["training_config.learning_rate"] for c in children} == {"0.001", "1e-09"}
    # the trial number as a param (an axis for MLflow's charts) and Optuna's state as a tag, on every child
    assert sorted(c.data.params["optuna.trial_number"] for c in children) == ["0", "1", "2", "3"]
    assert {c.data.params["optuna.trial_number"]: c.data.tags["optuna.state"] for c in children} == {
        "0": "COMPLETE", "1": "COMPLETE", "2": "PRUNED", "3": "PRUNED"}
    description = parent.data.tags["mlflow.note.content"]
    assert str(BASE) in description and str(nest.space) in description and "minimize val_loss" in description
    assert parent.data.tags["capexp.best_trial"] == str(summary.best_trial)
    assert parent.data.tags["capexp.best_run_id"] in {c.info.run_id for c in children}
    assert parent.data.metrics["best_val_loss"] == pytest.approx(summary.best_value)
    client = mlflow.MlflowClient(nest.uri)
    models = client.search_logged_models([parent.info.experiment_id])  # without --keep-models: every trial's
    assert sorted(m.source_run_id for m in models) == sorted(c.info.run_id for c in children)


def test_study_logs_plots_a_trials_table_and_importances_that_compare_reports(nest: Nest, tmp_path: Path) -> None:
    parent, children = _runs(nest.uri, "nest")
    client = mlflow.MlflowClient(nest.uri)
    plots = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {f"{name}.png" for name in PLOTS}
    table = _trials_table(client, parent.info.run_id)
    assert [row["state"] for row in table] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert {row["run_id"] for row in table} == {c.info.run_id for c in children}

    # Which knobs mattered: their importances on the parent run, then in compare's Markdown
    # report, which copies the four plots beside itself and links them.
    importances = {k.removeprefix("importance."): v for k, v in parent.data.metrics.items() if k.startswith("importance.")}
    assert set(importances) == set(SPACE["params"]) and sum(importances.values()) == pytest.approx(1.0)
    report = tmp_path / "docs" / "nest.md"
    text = compare(study="nest", output=report, tracking_uri=nest.uri, console=Console(file=io.StringIO()))
    assert report.read_text() == text and "### Which knobs mattered" in text
    trial_rows = text.split("\n\n")[0].splitlines()[2:]  # one per trial, best first
    assert [row.split(" | ")[-3].strip("* ") for row in trial_rows] == ["best", "complete", "pruned", "pruned"]
    for knob, value in importances.items():
        assert f"| {knob} | {value:.3f} |" in text
    links = [line[line.index("](") + 2:-1] for line in text.splitlines() if line.startswith("![")]
    assert links == [f"nest-plots/{name}.png" for name in PLOTS]
    assert all((report.parent / link).read_bytes().startswith(b"\x89PNG") for link in links)


def test_the_same_study_again_runs_nothing_and_keeps_its_parent_run(nest: Nest, tiny) -> None:
    again = run_study(BASE, trials=4, name="nest", space=nest.space, storage=nest.storage, enqueue=nest.queued,
                      overrides=tiny.sets(TWO_STEPS, TWO_EPOCHS), tracking_uri=nest.uri, control=False)
    assert (again.complete, again.pruned) == (2, 2) and again.parent_run_id == nest.summary.parent_run_id
    assert len(_trials(nest.storage, "nest")) == 4


def test_optuna_dashboard_reads_the_study_journal(nest: Nest, tmp_path: Path) -> None:
    from optuna_dashboard import wsgi
    from optuna_dashboard._storage_url import get_storage  # what `optuna-dashboard FILE` runs

    app = wsgi(get_storage(nest.storage))
    status: list[str] = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/api/studies", "QUERY_STRING": "", "SERVER_NAME": "x",
                         "SERVER_PORT": "80", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http"},
                        lambda s, headers, exc_info=None: status.append(s)))
    assert status == ["200 OK"]
    studies = json.loads(body)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["nest"]
    missing = CliRunner().invoke(cli, ["dashboard", "nosuch", "--storage", str(tmp_path / "nosuch.journal")])
    assert missing.exit_code == 2 and "no study journal" in missing.output


def test_killed_worker_then_rerun_completes_and_keeps_every_finished_trial(
    tmp_path: Path, tracking_uri: str, space: Path, tiny
) -> None:
    storage = str(tmp_path / "k.journal")
    args = dict(trials=2, name="killed", space=str(space), storage=storage, overrides=tiny.sets(TWO_STEPS))
    code = f"from capexp.study import run_study; run_study({str(BASE)!r}, **{args!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = mlflow.MlflowClient(tracking_uri)
    deadline = time.monotonic() + 150
    try:
        while True:  # kill it in the middle of its second trial, once that trial's run exists
            assert proc.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "no trial finished in time"
            trials = _trials(storage, "killed") if Path(storage).exists() else []
            if len(trials) == 2 and trials[0].state.is_finished() and trials[1].state == TrialState.RUNNING:
                exp = client.get_experiment_by_name("capexp")
                if client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_TRIAL}` = '1'"):
                    break
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {t.number: (t.state, t.value) for t in _trials(storage, "killed") if t.state.is_finished()}
    assert before

    summary = run_study(BASE, **args)

    trials = _trials(storage, "killed")
    assert {t.number: (t.state, t.value) for t in trials if t.number in before} == before
    killed = trials[1]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params and retries[0].state.is_finished()
    assert summary.complete + summary.pruned == 2
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 2
    parent, children = _runs(tracking_uri, "killed")
    status = {c.data.tags[TAG_TRIAL]: c.info.status for c in children}
    assert status.pop(str(killed.number)) == "KILLED"
    assert set(status.values()) == {"FINISHED"} and parent.info.status == "FINISHED"


def test_bad_values_and_enqueued_specs_fail_before_any_trial(tmp_path: Path, tiny) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"params": {"gpt2_config.visual_tokens_length": {"choices": [4, 0]}}}))
    storage = str(tmp_path / "never.journal")
    with pytest.raises(CapexpError, match=r"bad.json: `params.gpt2_config.visual_tokens_length` value 0 does not fit the base spec"):
        run_study(BASE, trials=1, space=bad, storage=storage, overrides=tiny.sets())
    assert not Path(storage).exists()

    queued = tmp_path / "k7.json"
    queued.write_text(json.dumps({"gpt2_config": {"visual_tokens_length": 7}, "training_config": {"learning_rate": 1e-3}}))
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    with pytest.raises(CapexpError, match=r"--enqueue .*k7.json: `gpt2_config.visual_tokens_length` is 7"):
        run_study(BASE, trials=1, space=space, storage=storage, enqueue=[queued], overrides=tiny.sets())

    f8k = REPO / "experiments" / "flickr8k.json"  # its data folder, moved away
    with pytest.raises(CapexpError, match=r"flickr8k.json: data not found: `data_paths.root`"):
        run_study(f8k, trials=1, space=space, storage=str(tmp_path / "nodata.journal"),
                  overrides=[f"data_paths.root={tmp_path / 'gone'}"])
    assert not (tmp_path / "nodata.journal").exists()


def test_diverging_trials_fail_alone_and_the_study_goes_on(tmp_path: Path, tracking_uri: str, tiny) -> None:
    space = tmp_path / "grid.json"
    space.write_text(json.dumps({"objective": {"metric": "val_loss"}, "sampler": {"name": "grid"},
                                 "pruner": {"name": "none"},
                                 "params": {"training_config.learning_rate": {"choices": [1e6, 1e-3]}}}))
    storage = str(tmp_path / "g.journal")
    summary = run_study(BASE, trials=2, name="diverge", space=space, storage=storage, overrides=tiny.sets(TWO_STEPS),
                        control=False)

    assert (summary.complete, summary.failed) == (1, 1)  # lr 1e6 diverges; the study still runs lr 1e-3
    assert summary.best_params["training_config.learning_rate"] == 1e-3
    parent, children = _runs(tracking_uri, "diverge")
    assert parent.info.status == "FINISHED"
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED"]  # the diverged run is kept, FAILED
    client = mlflow.MlflowClient(tracking_uri)
    failed = [row for row in _trials_table(client, parent.info.run_id) if row["state"] == "FAIL"]
    assert len(failed) == 1 and "training loss became nan" in failed[0]["error"]
    assert "training_config.learning_rate" in failed[0]["error"]  # the error says what to change


def test_keep_models_leaves_the_best_trials_models_and_every_trials_metrics(tmp_path: Path, tracking_uri: str, tiny) -> None:
    space = tmp_path / "grid.json"
    space.write_text(json.dumps({"objective": {"metric": "val_loss"}, "sampler": {"name": "grid"},
                                 "pruner": {"name": "none"},
                                 "params": {"training_config.learning_rate": {"choices": [1e-3, 1e-9, 1e-2]}}}))
    summary = run_study(BASE, trials=3, name="keep", space=space, storage=str(tmp_path / "k.journal"),
                        overrides=tiny.sets(TWO_STEPS), keep_models=1, control=False)

    assert summary.complete == 3
    _, children = _runs(tracking_uri, "keep")
    client = mlflow.MlflowClient(tracking_uri)
    models = client.search_logged_models([children[0].info.experiment_id])
    assert [m.source_run_id for m in models] == [summary.best_run_id]  # the best trial's model only
    store = Path(tracking_uri[len("sqlite:///"):]).parent
    assert len(list(store.rglob("model.safetensors"))) == 1  # the others' weights are gone from disk
    for child in children:  # every trial keeps its metrics and curves
        assert "val_loss" in child.data.metrics and "curves.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
    with pytest.raises(CapexpError, match="keep-models"):
        run_checkpoint(next(c.info.run_id for c in children if c.info.run_id != summary.best_run_id), "a dropped trial")
    with pytest.raises(CapexpError, match="--keep-models must be 1 or more"):
        run_study(BASE, trials=3, name="keep", space=space, storage=str(tmp_path / "k.journal"), keep_models=0)


def test_a_worker_whose_trials_keep_failing_stops_with_the_reason(tmp_path: Path, tracking_uri: str, tiny) -> None:
    space = tmp_path / "bad_lr.json"
    space.write_text(json.dumps({"objective": {"metric": "val_loss"},
                                 "params": {"training_config.learning_rate": {"choices": [1e6, 1e7]}}}))
    storage = str(tmp_path / "b.journal")
    with pytest.raises(CapexpError, match=r"trials 0, 1, 2 failed one after another \(last: .*training loss became"):
        run_study(BASE, trials=5, name="allbad", space=space, storage=storage, overrides=tiny.sets(TWO_STEPS),
                  control=False)
    assert _states(_trials(storage, "allbad")) == ["FAIL"] * 3  # it stopped instead of trying forever
    parent, children = _runs(tracking_uri, "allbad")
    assert parent.info.status == "FAILED" and [c.info.status for c in children] == ["FAILED"] * 3


def test_best_spec_is_the_best_trial_at_full_budget_and_runs(tmp_path: Path, tracking_uri: str, tiny) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps({**SPACE, "budget": {"training_config.num_epochs": 1}}))
    storage = str(tmp_path / "b.journal")
    summary = run_study(BASE, trials=2, name="best", space=space, storage=storage, overrides=tiny.sets(TWO_STEPS, TWO_EPOCHS))
    result = CliRunner().invoke(cli, ["study", "--name", "best", "--storage", storage, "--best-spec",
                                      *tiny.args(TWO_STEPS, TWO_EPOCHS)])
    assert result.exit_code == 0, result.output
    path = tmp_path / "best.json"
    path.write_text(result.output)
    spec = load_spec(path)
    flat = flatten(spec)
    assert {k: flat[k] for k in summary.best_params} == summary.best_params
    assert spec.training_config.num_epochs == 2  # the base's own budget (TWO_EPOCHS), not the space's 1
    assert f"Best trial {summary.best_trial} of study best" in spec.notes
    run = CliRunner().invoke(cli, ["run", str(path)])
    assert run.exit_code == 0, run.output


def test_progress_lines_name_each_trial_and_stay_readable_at_80_columns(
    tmp_path: Path, tracking_uri: str, space: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    storage = str(tmp_path / "p.journal")
    run_study(BASE, trials=3, name="progress", space=space, storage=storage, overrides=tiny.sets(TWO_STEPS, TWO_EPOCHS))
    err = capfd.readouterr().err
    trials = _trials(storage, "progress")
    blocks: list[list[str]] = []  # each progress line with its indented continuation lines
    for line in err.splitlines():  # (training's progress bars, rewritten with \r, are other lines)
        if line.startswith("trial "):
            blocks.append([line])
        elif blocks and line.startswith("    ") and len(blocks[-1]) < 4 and line.strip():
            blocks[-1].append(line)
    assert len(blocks) == 3, err
    assert all(len(line) <= 80 for block in blocks for line in block)
    lines = [block[0] for block in blocks]
    for trial, block in zip(trials, (" ".join(b.strip() for b in block) for block in blocks)):
        assert block.startswith(f"trial {trial.number} ")
        if trial.state == TrialState.COMPLETE:
            assert f"val_loss {trial.value:.4f}" in block
        else:
            assert f"pruned at epoch {len(trial.intermediate_values)}" in block
        lr = trial.params["training_config.learning_rate"]
        assert f"lr={'1e-09' if lr < 1e-6 else '0.001'}" in block and f"k={trial.params['gpt2_config.visual_tokens_length']}" in block
        assert "/3 done" in block
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"best #{best.number} {best.value:.4f}" in " ".join(blocks[-1])
    assert "min left" in lines[0]  # an estimate while trials remain
    assert "Trial 0 finished with value" not in err  # Optuna's own line is not printed beside ours


def test_trials_with_equal_objectives_have_no_importances_and_still_four_plots(tmp_path: Path) -> None:
    from capexp.study.report import _importances, _plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    # every trial scores the same: there is nothing for fANOVA to attribute
    study.optimize(lambda t: 0.5 + 0 * t.suggest_int("k", 2, 6) + 0 * t.suggest_float("lr", 1e-4, 1e-2), n_trials=3)
    assert _importances(study) == {}
    paths = _plots(study, tmp_path, "cider", {})
    assert [p.name for p in paths] == [f"{n}.png" for n in PLOTS]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
