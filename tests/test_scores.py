"""`capexp score` and `capexp compare --ranking`: the seed study's human scores become its ranking."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from capexp.compare import compare
from capexp.errors import CapexpError
from capexp.evaluation.human_scores import import_scores, run_name_of
from capexp.tracking import experiment_id, use_store

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SEED_IDS = [
    "20250725_125558",
    "20250725_135939",
    "20250725_174616",
    "20250725_233058",
    "20250726_111600",
    "20250726_183853",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One SQLite store for the module: six runs named by the seed's IDs in experiment
    `capexp`, and three in `scratch`; yields {experiment/name: run id}."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        use_store(uri)
        client = MlflowClient()
        ids = {}
        for experiment, names in (("capexp", SEED_IDS), ("scratch", ["run_a", "run_b", "unscored"])):
            for i, name in enumerate(names):
                run = client.create_run(experiment_id(experiment), start_time=i + 1, run_name=name)
                client.set_terminated(run.info.run_id)
                ids[f"{experiment}/{name}"] = run.info.run_id
        yield ids


def _ranking_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Ranking |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_seed_scores_give_seed_ranking(store: dict[str, str]) -> None:
    from mlflow import MlflowClient

    result = import_scores(FIXTURES / "inference_scores.csv")
    assert result.unmatched == {} and result.problems == []
    totals = {r.run_name: (r.total, r.images) for r in result.runs}
    assert totals == {
        "20250725_125558": (0, 27),
        "20250725_135939": (19, 27),
        "20250725_174616": (33, 27),
        "20250725_233058": (37, 27),
        "20250726_111600": (34, 27),
        "20250726_183853": (33, 27),
    }
    client = MlflowClient()
    best = client.get_run(store["capexp/20250725_233058"])
    assert best.data.metrics["human_total"] == 37
    assert best.data.metrics["human_accuracy"] == pytest.approx(37 * 100 / 54)
    artifact = client.download_artifacts(best.info.run_id, "human_scores/inference_scores.csv")
    assert len(Path(artifact).read_text().splitlines()) == 1 + 27

    md = compare(ranking=True, fmt="md", console=Console(file=io.StringIO()))
    seed = _ranking_lines((FIXTURES / "seed_study.md").read_text())
    assert md.splitlines() == seed  # ranks 1 2 3 3 5 6, totals 37 .. 0, accuracies 69% .. 0%


def test_unmatched_and_malformed_rows_are_reported(store: dict[str, str], tmp_path: Path) -> None:
    from mlflow import MlflowClient

    scores = tmp_path / "scores.csv"
    scores.write_text(
        "image_id,model_name,caption,score\n"
        f"a.jpg,{store['scratch/run_a']},A dog.,2\n"  # by run id
        "b.jpg,best_model_run_a.pkl,A cat.,1\n"  # by the seed's checkpoint name
        "a.jpg,run_b,A cat.,1\n"  # by run name
        "a.jpg,run_c,A car.,2\n"  # no such run
        "b.jpg,run_b,A car.,3\n"  # bad score
        ",run_b,A car.,1\n"  # no image
        "a.jpg,run_b,Again.,0\n"  # duplicate
    )
    result = import_scores(scores, experiment="scratch")
    assert [(r.run_name, r.total, r.images) for r in result.runs] == [("run_a", 3, 2), ("run_b", 1, 1)]
    assert result.unmatched == {"run_c": 1}
    assert result.problems == [
        "row 6: score '3' is not 0, 1 or 2",
        "row 7: empty image_id",
        "row 8: run_b already scored a.jpg on row 4; kept row 4",
    ]
    report = result.report()
    assert "run_a" in report and "75%" in report and "run_c (1 rows)" in report and "row 6" in report
    run_b = MlflowClient().get_run(store["scratch/run_b"])
    assert run_b.data.metrics["human_accuracy"] == 50


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image_id,model,caption,score\na.jpg,run_a,A dog.,2\n", r"row 1 \(header\): missing column\(s\) model_name"),
        ("image_id,model_name,caption,score\na.jpg,run_a,A dog.,good\n", "no valid score rows.*row 2: score 'good'"),
        ("image_id,model_name,caption,score\na.jpg,nobody,A dog.,2\n", "No model_name .* matches a run in experiment 'scratch'"),
    ],
)
def test_bad_file_is_an_error_naming_file_and_row(store: dict[str, str], tmp_path: Path, text: str, message: str) -> None:
    scores = tmp_path / "bad_scores.csv"
    scores.write_text(text)
    with pytest.raises(CapexpError, match=message) as err:
        import_scores(scores, experiment="scratch")
    assert "bad_scores.csv" in str(err.value)


def test_missing_file_and_unknown_experiment(store: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(CapexpError, match="does not exist"):
        import_scores(tmp_path / "nope.csv")
    with pytest.raises(CapexpError, match="no MLflow experiment named 'nope'.*capexp, scratch"):
        import_scores(FIXTURES / "inference_scores.csv", experiment="nope")


def test_ranking_needs_scores(store: dict[str, str]) -> None:
    with pytest.raises(CapexpError, match="capexp score"):
        compare(["unscored"], experiment="scratch", ranking=True, fmt="md", console=Console(file=io.StringIO()))


def test_run_name_of_checkpoint_names() -> None:
    assert run_name_of("best_model_20250725_233058.pkl") == "20250725_233058"
    assert run_name_of("trained_models/best_model_x.safetensors") == "x"
    assert run_name_of("20250725_233058") == "20250725_233058"
