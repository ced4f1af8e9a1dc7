"""Cost as an objective: a space of several objectives, the Pareto front, and the `--pick` rule."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from capexp.cli import cli
from capexp.errors import CapexpError
from capexp.study.front import picked_trial, ranked
from capexp.study.pareto import Member, default_pick, objective_value, pareto_front, parse_pick, pick
from capexp.study.plan import StudyPlan
from capexp.study.progress import trial_line
from capexp.study.space import load_space
from capexp.study.storage import open_storage
from capexp.tracking.names import ATTR_BASE, ATTR_METRIC, ATTR_SPACE

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = [("cider", "maximize"), ("train_minutes", "minimize")]
# Trials 3 and 4 are dominated (by 2, and by 0); 0, 1 and 2 trade quality for minutes.
TRIALS = {0: (0.50, 4.0), 1: (0.49, 2.0), 2: (0.45, 1.0), 3: (0.40, 3.0), 4: (0.50, 5.0)}
MEMBERS = [Member(n, {"cider": c, "train_minutes": m}) for n, (c, m) in TRIALS.items()]
SPACE = {
    "objective": [{"metric": "cider", "direction": "maximize"}, {"metric": "train_minutes", "direction": "minimize"}],
    "params": {"gpt2_config.visual_tokens_length": {"choices": [2, 4, 8]}},
}


def test_the_front_is_the_undominated_trials_best_quality_first() -> None:
    assert [m.number for m in pareto_front(MEMBERS, OBJECTIVES)] == [0, 1, 2]
    flipped = [("cider", "minimize"), ("train_minutes", "maximize")]
    assert [m.number for m in pareto_front(MEMBERS, flipped)] == [3, 4]


@pytest.mark.parametrize(("rule", "trial"), [
    ("cider>=0.98*best, min train_minutes", 1),  # the default: within 2% of the best CIDEr (0.49), then cheapest
    ("cider>=0.9*best, min train_minutes", 2),
    ("train_minutes<=3, max cider", 1),
    ("cider >= 0.46", 0),  # without min/max: the best of the first objective
    ("train_minutes<=best", 2),
    ("max cider", 0),
])
def test_pick_on_a_known_front(rule: str, trial: int) -> None:
    front = pareto_front(MEMBERS, OBJECTIVES)
    assert pick(front, parse_pick(rule), OBJECTIVES, "s").number == trial


def test_the_default_rule_follows_the_directions() -> None:
    assert default_pick(OBJECTIVES) == "cider>=0.98*best, min train_minutes"
    assert default_pick([("val_loss", "minimize"), ("train_minutes", "minimize")]) == "val_loss<=1.02*best, min train_minutes"
    assert default_pick([("cider", "maximize")]) == "max cider"


def test_a_rule_naming_a_metric_the_study_lacks_is_refused() -> None:
    with pytest.raises(CapexpError) as e:
        pick(pareto_front(MEMBERS, OBJECTIVES), parse_pick("bleu4>=0.2, min train_minutes"), OBJECTIVES, "s")
    assert str(e.value) == ("--pick 'bleu4>=0.2, min train_minutes': study s has no objective 'bleu4'; its objectives "
                            "are cider, train_minutes. Name one of these.")


@pytest.mark.parametrize(("rule", "said"), [
    ("cider=>0.5", "is neither a bound nor an order"),
    ("min train_minutes, cider>=0.5", "must come last"),
    ("min train_minutes, max cider", "second `min`/`max` clause"),
])
def test_bad_rule_syntax_says_how_to_write_one(rule: str, said: str) -> None:
    with pytest.raises(CapexpError, match=said):
        parse_pick(rule)


def test_a_rule_no_member_meets_shows_the_front() -> None:
    with pytest.raises(CapexpError, match=r"meets 'train_minutes<0.5'.*#0 cider=0.5 train_minutes=4"):
        pick(pareto_front(MEMBERS, OBJECTIVES), parse_pick("train_minutes<0.5"), OBJECTIVES, "s")


def test_minutes_score_a_trial_by_their_total_other_metrics_by_the_best_epoch() -> None:
    assert objective_value("train_minutes", "minimize", [0.5, 1.0, 1.5]) == 1.5
    assert objective_value("cider", "maximize", [0.2, 0.4, 0.3]) == 0.4
    assert objective_value("val_loss", "minimize", [2.0, 1.0, 1.5]) == 1.0
    assert objective_value("cider", "maximize", []) is None


def test_a_space_may_list_several_objectives(tmp_path: Path) -> None:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACE))
    assert [(o.metric, o.direction) for o in load_space(path).objective] == OBJECTIVES  # type: ignore[union-attr]
    shipped = load_space(REPO / "studies" / "cost.json")  # the seed's knobs against minutes
    assert [o.metric for o in shipped.objective] == ["auto", "train_minutes"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("change", "said"), [
    ({"objective": [{"metric": "cider"}]}, "`objective`: a list needs two objectives or more"),
    ({"objective": [{"metric": "cider"}, {"metric": "cider"}]}, "`objective`: names cider more than once"),
    ({"objective": [{"metric": "cider"}, {"metric": "train_minutes", "direction": "down"}]},
     "`objective.1.direction`: input should be 'auto', 'maximize' or 'minimize'"),
    ({"pruner": {"name": "median"}}, "`pruner`: pruning works on one objective only"),
])
def test_a_bad_list_of_objectives_names_the_file_and_field(tmp_path: Path, change: dict, said: str) -> None:
    path = tmp_path / "space.json"
    path.write_text(json.dumps({**SPACE, **change}))
    with pytest.raises(CapexpError) as e:
        load_space(path)
    assert str(e.value).startswith(f"{path}: {said}")


def _study(tmp_path: Path, name: str = "pq") -> str:
    """A journal study of the five TRIALS (made here, no training), as `capexp study` records one."""
    storage = str(tmp_path / f"{name}.journal")
    study = optuna.create_study(study_name=name, storage=open_storage(storage, name), directions=["maximize", "minimize"])
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    for key, value in ((ATTR_METRIC, "cider,train_minutes"), (ATTR_BASE, str(REPO / "experiments" / "quickstart.json")),
                       (ATTR_SPACE, str(space))):
        study.set_user_attr(key, value)
    dist = optuna.distributions.CategoricalDistribution([2, 4, 8])
    for number, values in TRIALS.items():
        study.add_trial(optuna.trial.create_trial(params={"gpt2_config.visual_tokens_length": [2, 4, 8][number % 3]},
                                                  distributions={"gpt2_config.visual_tokens_length": dist},
                                                  values=list(values)))
    return storage


def test_progress_lines_and_kept_models_follow_the_front(tmp_path: Path) -> None:
    storage = _study(tmp_path)
    study = optuna.load_study(study_name="pq", storage=open_storage(storage, "pq"))
    plan = StudyPlan(name="pq", storage=storage, base="b.json", snapshot="b.json", space=load_space(tmp_path / "space.json"),
                metric="cider", direction="maximize", num_epochs=1, trials=6, experiment="capexp",
                tracking_uri="sqlite:///unused.db", parent_run_id="p", heartbeat_interval=60, seed_offset=0, threads=0,
                log_level=0, objectives=tuple(OBJECTIVES))
    line = trial_line(study, study.trials[1], plan, width=200)
    assert line.startswith("trial 1 cider 0.4900, train_minutes 2.0000 | front #0 #1 #2 | 5/6 done")
    assert [t.number for t in ranked(study, study.trials, plan)] == [0, 1, 2, 4, 3]


def test_the_pareto_plot_names_the_control_and_the_default_pick(tmp_path: Path) -> None:
    from capexp.study.pareto_report import _marks

    storage = _study(tmp_path)
    study = optuna.load_study(study_name="pq", storage=open_storage(storage, "pq"))
    assert _marks(study, "pq", None) == {1: "default pick"}
    assert _marks(study, "pq", 4) == {1: "default pick", 4: "control"}  # a dominated control is named too
    assert _marks(study, "pq", 1) == {1: "control, default pick"}


def test_best_spec_picks_a_member_of_the_front_and_refuses_an_unknown_metric(tmp_path: Path) -> None:
    storage = _study(tmp_path)
    study = optuna.load_study(study_name="pq", storage=open_storage(storage, "pq"))
    trial, said = picked_trial(study, "pq", None)
    assert trial.number == 1 and said == ("cider 0.4900, train_minutes 2.0000; picked by "
                                          "'cider>=0.98*best, min train_minutes' from a Pareto front of 3")
    result = CliRunner().invoke(cli, ["study", "--name", "pq", "--storage", storage, "--best-spec",
                                      "--pick", "cider>=0.9*best, min train_minutes"])
    assert result.exit_code == 0, result.output
    spec = json.loads(result.output)
    assert spec["gpt2_config"]["visual_tokens_length"] == 8  # trial 2's value
    assert spec["notes"].startswith("Best trial 2 of study pq (cider 0.4500, train_minutes 1.0000; picked by")
    refused = CliRunner().invoke(cli, ["study", "--name", "pq", "--storage", storage, "--best-spec", "--pick", "bleu4>=1"])
    assert refused.exit_code == 2
    assert len(refused.output.strip().splitlines()) == 1 and "has no objective 'bleu4'" in refused.output


def _logged_study(uri: str) -> None:
    """An MLflow parent run and the five TRIALS as its children, logged as `capexp study` logs them (no training)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from capexp.tracking.names import PARAM_TRIAL_NUMBER, TAG_OPTUNA_STATE, TAG_PARENT, TAG_STUDY, TAG_STUDY_ROLE, TAG_TRIAL

    client = MlflowClient(uri)
    exp = client.create_experiment("capexp")
    parent = client.create_run(exp, run_name="pq", tags={TAG_STUDY: "pq", TAG_STUDY_ROLE: "parent"}).info.run_id
    params = {"objective.metric": "cider", "objective.direction": "maximize", "objective.metrics": "cider,train_minutes",
              "objective.directions": "maximize,minimize", "space.gpt2_config.visual_tokens_length": "{}"}
    knob = "gpt2_config.visual_tokens_length"  # its share of each objective's variance: all of it
    client.log_batch(parent, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(f"importance.{knob}", 1.0, 0, 0), Metric(f"importance/train_minutes/{knob}", 1.0, 0, 0)])
    for number, (cider, minutes) in TRIALS.items():
        run = client.create_run(exp, run_name=f"pq-{number:03d}", tags={
            TAG_STUDY: "pq", TAG_PARENT: parent, TAG_TRIAL: str(number), TAG_OPTUNA_STATE: "COMPLETE"}).info.run_id
        # CIDEr peaks at epoch 1; minutes add up: the study scored the peak and the total
        metrics = [Metric("cider", cider, 0, 1), Metric("cider", cider - 0.1, 0, 2),
                   Metric("train_minutes", minutes / 2, 0, 1), Metric("train_minutes", minutes, 0, 2)]
        client.log_batch(run, metrics=metrics, params=[Param(PARAM_TRIAL_NUMBER, str(number)),
                                                       Param("gpt2_config.visual_tokens_length", str(2 + number))])
        client.set_terminated(run)


def test_compare_study_shows_the_front_at_80_columns(tracking_uri: str) -> None:
    import io

    from rich.console import Console

    from capexp.compare import compare

    _logged_study(tracking_uri)
    text = compare(study="pq", console=Console(file=io.StringIO(), width=80))
    assert all(len(line) <= 80 for line in text.splitlines())
    start = text.index("Pareto front of study pq")
    front = text[start:]
    assert "(maximize cider, minimize train_minutes): 3 of 5 complete trials" in " ".join(front.split())
    rows = [line.split() for line in front.splitlines() if line.strip()[:1].isdigit()]
    assert rows == [["0", "2", "0.5000", "4.0000"], ["1", "3", "0.4900", "2.0000", "default", "pick"],
                    ["2", "4", "0.4500", "1.0000"]]
    markdown = compare(study="pq", fmt="md", console=Console(file=io.StringIO(), width=80))
    assert "### Pareto front" in markdown and "| **1** | 3 | 0.4900 | 2.0000 | default pick |" in markdown
    # the trials table shows every objective: minutes are each run's total
    assert "| # | k | cider | train_minutes | state | epochs | min |" in markdown
    assert "| 1 | 3 | 0.4900 | 2.0000 | complete | 2 |" in markdown
    assert "for each objective (cider, train_minutes)" in markdown
    assert "| knob | key | cider | train_minutes |\n|---|---|---|---|\n| k | gpt2_config.visual_tokens_length | 1.000 | 1.000 |" in markdown
    assert text[text.index("knob   key"):].split("\n")[0].split() == ["knob", "key", "cider", "train_minutes"]


def test_auto_direction_minimizes_minutes_and_losses_and_maximizes_scores() -> None:
    from capexp.spec.loading import load_spec
    from capexp.study.pareto import Objective
    from capexp.study.search import _auto_objective

    spec = load_spec(REPO / "experiments" / "quickstart.json")
    assert _auto_objective(Objective(metric="train_minutes"), spec) == ("train_minutes", "minimize")
    assert _auto_objective(Objective(metric="val_loss"), spec) == ("val_loss", "minimize")
    assert _auto_objective(Objective(metric="bleu4"), spec) == ("bleu4", "maximize")


def test_a_two_objective_study_prints_its_front_and_logs_the_plot(tmp_path: Path, tracking_uri: str) -> None:
    from mlflow import MlflowClient

    from capexp.study import run_study

    space = tmp_path / "space.json"
    space.write_text(json.dumps({**SPACE, "objective": [{"metric": "val_loss"}, {"metric": "train_minutes"}],
                                 "params": {"gpt2_config.visual_tokens_length": {"choices": [2, 4]}}}))
    tiny = ["training_config.num_epochs=1", "data_paths.num_train=16", "data_paths.num_val=4", "training_config.batch_size=8",
            "training_config.warmup_steps=0", "evaluation.coco_metrics=false", "evaluation.max_images=4"]
    two = tmp_path / "two-tokens.json"  # tried after the control's 4 tokens
    two.write_text(json.dumps({"extends": str(REPO / "experiments" / "quickstart.json"),
                               "gpt2_config": {"visual_tokens_length": 2}}))
    summary = run_study(REPO / "experiments" / "quickstart.json", trials=2, name="two", space=space,
                        storage=str(tmp_path / "two.journal"), overrides=tiny, enqueue=[two])
    assert summary.complete == 2 and summary.best_trial is None  # no single best trial
    assert summary.front[0].startswith("Pareto front (minimize val_loss, minimize train_minutes)")
    study = optuna.load_study(study_name="two", storage=open_storage(str(tmp_path / "two.journal"), "two"))
    assert study.trials[0].user_attrs.get("capexp.control") is True  # the control is an enqueued trial here too
    assert {f"  trial {t.number}: val_loss={t.values[0]:.4f}" for t in study.best_trials} == {
        line.split(" train_minutes")[0] for line in summary.front[1:]}
    client = MlflowClient(tracking_uri)
    for t in study.trials:  # each trial's minutes are its run's logged total
        history = client.get_metric_history(t.user_attrs["mlflow_run_id"], "train_minutes")
        assert len(history) == 1 and t.values[1] == history[-1].value > 0
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.tags["capexp.pareto_front"] == ",".join(str(t) for t in sorted(
        (t.number for t in study.best_trials), key=lambda n: (study.trials[n].values[0], n)))
    plots = {f.path for f in client.list_artifacts(summary.parent_run_id, "plots")}
    # no per-epoch values with several objectives, so no (empty) intermediate-values plot
    assert plots == {f"plots/{p}.png" for p in ("optimization_history", "param_importances", "parallel_coordinate",
                                                 "pareto_front")}
    assert study.metric_names == ["val_loss", "train_minutes"]  # the importances plot's legend
    knob = "gpt2_config.visual_tokens_length"  # the one knob, whose two values the two trials ran
    assert {t.params[knob] for t in study.trials} == {2, 4}
    assert parent.data.metrics[f"importance.{knob}"] == parent.data.metrics[f"importance/train_minutes/{knob}"] == 1.0


def test_finalists_are_refused_with_several_objectives_in_one_line(tmp_path: Path) -> None:
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    storage = tmp_path / "f.journal"
    result = CliRunner().invoke(cli, ["study", "--name", "f", "--trials", "1", "--space", str(space), "--storage",
                                      str(storage), "--finalists", "2"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: --finalists ranks trials by one objective, but {space} lists 2 (cider, train_minutes): leave "
        "--finalists out, pick a member of the Pareto front with --best-spec --pick and train that spec with `capexp run`."
    ]
    assert not storage.exists()  # refused before the study was created


def test_plot_labels_name_params_as_the_tables_do() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from capexp.study.report import _short_labels

    fig, ax = plt.subplots()
    ax.set_xticks([0, 1, 2, 3], ["cider (validation)", "training_config.l...", "training_config.l...", "training_config.scst"])
    ax.set_yticks([0, 1, 2], ['{"epochs": 2, "samples": 5}', "None", "0.5"])
    _short_labels(fig, {"training_config.learning_rate", "training_config.label_smoothing", "training_config.scst"})
    # Optuna cuts long names and orders params by name: label_smoothing comes before learning_rate
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cider (validation)", "smooth", "lr", "scst"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "None", "0.5"]  # a section by its first field
    encoder = ax.twinx()  # an axis of names that share a prefix: the part that tells them apart
    encoder.set_yticks([0, 1, 2, 3], ["efficientnet-lite0", "efficientnet-lite2", "None", "1e-3"])
    lr = ax.twinx()  # a log axis's labels are mathtext with a common prefix: kept whole
    lr.set_yticks([0, 1], [r"$\mathdefault{10^{-3}}$", r"$\mathdefault{10^{-4}}$"])
    _short_labels(fig, set())
    assert [t.get_text() for t in encoder.get_yticklabels()] == ["lite0", "lite2", "None", "1e-3"]
    assert [t.get_text() for t in lr.get_yticklabels()] == [r"$\mathdefault{10^{-3}}$", r"$\mathdefault{10^{-4}}$"]
    bars = ax.twinx()  # the importance plot's params, one per bar
    bars.set_yticks([0, 1], ["training_config.learning_rate", "training_config.label_smoothing"])
    _short_labels(fig, {"training_config.learning_rate", "training_config.label_smoothing"})
    assert [t.get_text() for t in bars.get_yticklabels()] == ["lr", "smooth"]
    plt.close(fig)


def test_the_importances_plot_of_several_objectives_puts_each_knobs_bar_beside_its_name() -> None:
    """Optuna's plot of several objectives labels one objective's bars in another's order: capexp plots
    the first objective's importances, each bar at its own knob (the table holds the others)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from capexp.study.report import _importance_axes, _importances
    from capexp.study.storage import quiet_experimental

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    # quality hangs on x, minutes on y: the two objectives rank the knobs in opposite orders
    study.optimize(lambda t: (t.suggest_float("x", 0, 1) + 0.1 * t.suggest_float("y", 0, 1), t.params["y"]),
                   n_trials=30)
    first = lambda t: t.values[0]  # noqa: E731
    expected = _importances(study, first)
    assert list(expected) == ["x", "y"] and list(_importances(study, lambda t: t.values[1]))[0] == "y"
    with quiet_experimental():
        ax = _importance_axes(study, True, first, "cider (validation)")
    ticks = {round(float(y), 6): label.get_text() for y, label in zip(ax.get_yticks(), ax.get_yticklabels())}
    bars = {ticks[round(bar.get_y() + bar.get_height() / 2, 6)]: bar.get_width() for bar in ax.patches}
    assert bars == pytest.approx(expected)
    plt.close(ax.figure)
