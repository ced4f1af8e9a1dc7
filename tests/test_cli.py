"""The click wiring of the table commands: `capexp score` then `capexp compare --ranking`."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from capexp.cli import cli
from capexp.tracking import experiment_id, use_store

SEED_IDS = ["20250725_125558", "20250725_135939", "20250725_174616", "20250725_233058", "20250726_111600", "20250726_183853"]


def test_score_then_ranking_through_the_cli(tracking_uri: str, tmp_path: Path) -> None:
    use_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = experiment_id("capexp")
    for name in SEED_IDS:
        client.set_terminated(client.create_run(exp, run_name=name).info.run_id)
    runner = CliRunner()
    scored = runner.invoke(cli, ["score", str(Path(__file__).resolve().parent / "fixtures" / "inference_scores.csv")])
    assert scored.exit_code == 0, scored.output
    out = tmp_path / "ranking.md"
    ranked = runner.invoke(cli, ["compare", "--ranking", "--output", str(out)])
    assert ranked.exit_code == 0, ranked.output
    assert "| 1 | 20250725_233058 | 37 | 69% |" in out.read_text()
    assert "| 3 | 20250726_183853 | 33 | 61% |" in out.read_text()
    unknown = runner.invoke(cli, ["compare", "no_such_run"])
    assert unknown.exit_code == 2 and "no_such_run" in unknown.stderr
