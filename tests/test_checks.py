"""Values training would reject are rejected by `validate` and before a run exists (exit 2):
visual tokens past the decoder's positions, a `best_metric` no run logs, non-finite numbers,
and a spec path that is a directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from capexp.backbones import decoder_facts
from capexp.spec.checks import check_spec
from capexp.cli import cli
from capexp.errors import CapexpError
from capexp.spec.loading import load_spec

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.json")


def _sets(*values: str) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def _no_runs(uri: str) -> bool:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("capexp")
    return exp is None or client.search_runs([exp.experiment_id]) == []


def test_visual_tokens_past_decoder_positions_fail_validate_and_run_before_a_run(tracking_uri: str, tiny) -> None:
    runner = CliRunner()
    bad = "gpt2_config.visual_tokens_length=10000"
    checked = runner.invoke(cli, ["validate", QUICKSTART, *_sets(bad)])
    assert checked.exit_code == 2, checked.output
    assert "visual_tokens_length" in checked.stderr and "has 64" in checked.stderr and "quickstart.json" in checked.stderr
    assert "Traceback" not in checked.output
    ran = runner.invoke(cli, ["run", QUICKSTART, *tiny.args(bad)])
    assert ran.exit_code == 2 and "visual_tokens_length" in ran.stderr
    assert _no_runs(tracking_uri)
    # the limit is exact: k + text + EOS <= n_positions (64 for gpt2-tiny)
    load = lambda *s: load_spec(QUICKSTART, ["gpt2_config.text_tokens_max_length=12", *s])  # noqa: E731
    check_spec(load("gpt2_config.visual_tokens_length=51"), "q")
    with pytest.raises(CapexpError, match="need 65 positions"):
        check_spec(load("gpt2_config.visual_tokens_length=52"), "q")
    with pytest.raises(CapexpError, match="max_caption_tokens"):
        check_spec(load("gpt2_config.visual_tokens_length=4", "evaluation.max_caption_tokens=100"), "q")
    # the regions mapper's cell tokens count too: 42 + 3 x 3 cells + 13 = 64 fits, 4 x 4 cells do not
    regions = ('gpt2_config.mapper="regions"', 'clip_config.features="grid"', "gpt2_config.visual_tokens_length=42")
    check_spec(load(*regions, "gpt2_config.mapper_regions=3"), "q")
    with pytest.raises(CapexpError, match="regions mapper's 16 cell tokens .* need 71 positions"):
        check_spec(load(*regions, "gpt2_config.mapper_regions=4"), "q")


def test_freeze_depth_is_checked_by_validate_from_the_config() -> None:
    got = CliRunner().invoke(cli, ["validate", QUICKSTART, "--set", "gpt2_config.n_layers_to_freeze=5"])
    assert got.exit_code == 2 and "n_layers_to_freeze" in got.stderr and "4 blocks" in got.stderr


def test_a_folder_decoders_positions_come_from_its_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 16,
                                                      "num_hidden_layers": 2}))
    assert (decoder_facts(str(tmp_path)).positions, decoder_facts(str(tmp_path)).depth) == (16, 2)
    with pytest.raises(CapexpError, match="has 16"):
        check_spec(load_spec(QUICKSTART, [f"gpt2_config.model={json.dumps(str(tmp_path))}"]), "q")
    assert decoder_facts("no-such-org/never-cached-model") is None  # unknown: the run checks after loading


def test_unknown_best_metric_fails_validate_and_run_before_a_run(tracking_uri: str, tiny) -> None:
    runner = CliRunner()
    checked = runner.invoke(cli, ["validate", QUICKSTART, "--set", "training_config.best_metric=foo"])
    assert checked.exit_code == 2 and "best_metric" in checked.stderr and "val_loss" in checked.stderr
    ran = runner.invoke(cli, ["run", QUICKSTART, *tiny.args("training_config.best_metric=foo")])
    assert ran.exit_code == 2 and "best_metric" in ran.stderr
    assert _no_runs(tracking_uri)
    coco_off = runner.invoke(cli, ["validate", QUICKSTART, *_sets("training_config.best_metric=bleu4", "evaluation.coco_metrics=false")])
    assert coco_off.exit_code == 2 and "coco_metrics" in coco_off.stderr
    for metric in ("val_loss", "train_loss", "bertscore_f1"):
        assert runner.invoke(cli, ["validate", QUICKSTART, "--set", f"training_config.best_metric={metric}"]).exit_code == 0


def test_coco_best_metric_needs_java(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no java here
    got = CliRunner().invoke(cli, ["validate", QUICKSTART, "--set", "training_config.best_metric=bleu4"])
    assert got.exit_code == 2 and "Java" in got.stderr and "best_metric" in got.stderr


@pytest.mark.skipif(shutil.which("java") is None, reason="java is not installed")
def test_coco_best_metric_is_accepted_with_java() -> None:
    assert CliRunner().invoke(cli, ["validate", QUICKSTART, "--set", "training_config.best_metric=cider"]).exit_code == 0


@pytest.mark.parametrize("token", ["Infinity", "-Infinity", "NaN", "1e999"])
@pytest.mark.parametrize("key", ["training_config.learning_rate", "evaluation.length_penalty",
                                 "training_config.grad_clip", "data_paths.num_train"])
def test_non_finite_numbers_are_rejected_naming_the_field(tmp_path: Path, key: str, token: str) -> None:
    section, name = key.split(".")
    path = tmp_path / "spec.json"
    path.write_text(f'{{"extends": "{QUICKSTART}", "{section}": {{"{name}": {token}}}}}')
    with pytest.raises(CapexpError, match=f"`{key}`"):
        load_spec(path)
    got = CliRunner().invoke(cli, ["validate", QUICKSTART, "--set", f"{key}={token}"])
    assert got.exit_code == 2 and f"`{key}`" in got.stderr and "Traceback" not in got.output


def test_a_spec_path_that_is_a_directory_says_so(tmp_path: Path) -> None:
    got = CliRunner().invoke(cli, ["validate", str(tmp_path)])
    assert got.exit_code == 2 and "is a directory" in got.stderr and "does not exist" not in got.stderr
