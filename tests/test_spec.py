"""Specs: the seed's config loads unchanged; extends, --set, and errors that name file, field and fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from capexp.cli import cli
from capexp.errors import CapexpError
from capexp.spec.loading import flatten, load_spec, spec_hash

REPO = Path(__file__).resolve().parents[1]
SEED_STUDY = Path(__file__).resolve().parent / "fixtures" / "seed_study.md"


def _seed_config_from_seed_md() -> dict:
    text = SEED_STUDY.read_text()
    block = re.search(r"```json\n(.*?)```", text, re.S).group(1)
    return json.loads(block)


def test_seed_config_from_seed_md_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(_seed_config_from_seed_md()))
    spec = load_spec(path)
    assert spec.clip_config.image_size == (224, 224)
    assert spec.gpt2_config.n_layers_to_freeze == 10
    assert spec.training_config.subset_ratio == 0.4
    assert spec.data_paths.source == "caption_list"
    assert spec.data_paths.train_captions_path == "data/coco_train_captions_processed.json"
    assert json.loads((REPO / "experiments" / "seed_config.json").read_text()) == _seed_config_from_seed_md()


def test_six_seed_experiments_carry_seed_md_values() -> None:
    ids = ["20250725_125558", "20250725_135939", "20250725_174616", "20250725_233058", "20250726_111600", "20250726_183853"]
    specs = [load_spec(REPO / "experiments" / f"{i}.json") for i in ids]
    assert [s.id for s in specs] == ids
    assert [s.gpt2_config.visual_tokens_length for s in specs] == [2, 2, 4, 5, 10, 4]
    assert [s.gpt2_config.n_layers_to_freeze for s in specs] == [10, 10, 10, 11, 11, 6]
    assert [s.training_config.subset_ratio for s in specs] == [0.005, 0.1, 0.2, 0.4, 0.5, 0.4]
    assert [s.clip_config.image_size for s in specs] == [(50, 50)] * 2 + [(224, 224)] * 4
    assert specs[3].notes == "Increased subset size and froze more layers to reduce overfitting"


def test_params_are_named_by_seed_md_row_keys(tmp_path: Path) -> None:
    spec = load_spec(REPO / "experiments" / "20250725_125558.json")
    flat = flatten(spec)
    rows = ["clip_config.image_size", "gpt2_config.visual_tokens_length", "gpt2_config.text_tokens_max_length",
            "gpt2_config.n_layers_to_freeze", "training_config.subset_ratio", "training_config.batch_size",
            "training_config.learning_rate"]
    assert [flat[r] for r in rows] == [[50, 50], 2, 10, 10, 0.005, 64, 1e-4]


def test_extends_and_set_override_any_key(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"gpt2_config": {"visual_tokens_length": 3, "text_tokens_max_length": 12}}))
    child = tmp_path / "child.json"
    child.write_text(json.dumps({"extends": "base.json", "id": "x", "gpt2_config": {"visual_tokens_length": 7}}))
    spec = load_spec(child, ["clip_config.image_size=[50,50]", 'data_paths={"source": "flickr8k", "root": "/data/f8k"}',
                             "clip_config.model=efficientnet-lite0"])
    assert spec.gpt2_config.visual_tokens_length == 7 and spec.gpt2_config.text_tokens_max_length == 12
    assert spec.clip_config.image_size == (50, 50) and spec.clip_config.model == "efficientnet-lite0"
    assert spec.data_paths.source == "flickr8k" and spec.data_paths.root == "/data/f8k"
    # the seed's caption-list data can be switched to another source wholesale
    seeded = load_spec(REPO / "experiments" / "20250725_233058.json", ['data_paths={"source": "generated", "num_train": 10}'])
    assert seeded.data_paths.source == "generated" and seeded.data_paths.num_train == 10


def test_spec_hash_ignores_id_and_notes_but_not_values() -> None:
    a = load_spec(REPO / "experiments" / "quickstart.json", ["id=a", "notes=one"])
    b = load_spec(REPO / "experiments" / "quickstart.json", ["id=b", "notes=two"])
    c = load_spec(REPO / "experiments" / "quickstart.json", ["gpt2_config.visual_tokens_length=9"])
    assert spec_hash(a) == spec_hash(b) != spec_hash(c)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("gpt2_config.visual_tokens_lenght=3", r"`gpt2_config.visual_tokens_lenght` is not a spec key; did you mean `gpt2_config.visual_tokens_length`\?"),
        ('gpt2_config.visual_tokens_length="many"', r"`gpt2_config.visual_tokens_length` input should be a valid integer"),
        ("gpt2_config.visual_tokens_length=0", r"`gpt2_config.visual_tokens_length` input should be greater than or equal to 1"),
        ('data_paths.source="imagenet"', r"`data_paths.source` must be one of caption_list, coco, flickr8k, karpathy, generated"),
        ('gpt2_config.mapper="regions"', r'quickstart.json with --set gpt2_config.mapper="regions": gpt2_config.mapper "regions" '
                                         r'pools .* clip_config.features is "pooled": set clip_config.features to "grid"'),
        ("training_config.feature_crop=0.7", r'training_config.feature_crop pools .* clip_config.features is "pooled": '
                                             r'set clip_config.features to "grid"'),
        ('training_config.feature_crop=0.7 --set clip_config.features="grid" --set gpt2_config.mapper="transformer"',
         r'gpt2_config.mapper is "transformer": set the mapper to "mlp"'),
    ],
)
def test_bad_values_name_file_field_and_fix(override: str, expected: str) -> None:
    with pytest.raises(CapexpError, match=expected) as err:
        load_spec(REPO / "experiments" / "quickstart.json", override.split(" --set "))
    assert "quickstart.json" in str(err.value) and "Fix the file or the --set value" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_file_suggests_closest(tmp_path: Path) -> None:
    path = tmp_path / "typo.json"
    path.write_text(json.dumps({"training_config": {"learnig_rate": 0.1}}))
    with pytest.raises(CapexpError, match=r"typo.json: `training_config.learnig_rate` is not a spec key; did you mean `training_config.learning_rate`\?"):
        load_spec(path)


def test_extends_cycle_and_missing_parent(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"extends": "b.json"}))
    (tmp_path / "b.json").write_text(json.dumps({"extends": "a.json"}))
    with pytest.raises(CapexpError, match="cycle"):
        load_spec(tmp_path / "a.json")
    (tmp_path / "c.json").write_text(json.dumps({"extends": "nowhere.json"}))
    with pytest.raises(CapexpError, match=r"nowhere.json \(extended by .*c.json\) does not exist"):
        load_spec(tmp_path / "c.json")


def test_env_var_with_default_in_data_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from capexp.spec.loading import expand_path

    monkeypatch.delenv("CAPEXP_DATA", raising=False)
    assert expand_path("${CAPEXP_DATA:-../shared/data}/flickr8k") == Path("../shared/data/flickr8k")
    monkeypatch.setenv("CAPEXP_DATA", "/data")
    assert expand_path("${CAPEXP_DATA:-../shared/data}/flickr8k") == Path("/data/flickr8k")


def test_cli_validate_prints_resolved_spec_and_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", str(REPO / "experiments" / "quickstart.json"), "--set", "seed=7"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["seed"] == 7
    bad = runner.invoke(cli, ["validate", str(REPO / "experiments" / "quickstart.json"), "--set", "seed=[1]"])
    assert bad.exit_code == 2 and "`seed`" in bad.stderr
    missing = runner.invoke(cli, ["validate", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "nope.json does not exist" in missing.stderr
    seed_missing_data = runner.invoke(cli, ["validate", "--strict", str(REPO / "experiments" / "20250725_233058.json")])
    assert seed_missing_data.exit_code == 2 and "data_paths.train_captions_path" in seed_missing_data.stderr


def test_seed_study_fixtures_match_the_seed_study_itself(shared_data: Path) -> None:
    """The copy of the seed study's facts in tests/fixtures/ is verbatim the study's own text and scores."""
    original = (shared_data.parent / "SEED.md").read_text()
    copy = SEED_STUDY.read_text()
    for block in (re.search(r"```json\n.*?```", copy, re.S).group(0), *re.findall(r"(?m)^\|.*\|$", copy)):
        assert block in original
    scores = (shared_data / "seed_scores" / "inference_scores.csv").read_bytes()
    assert (SEED_STUDY.parent / "inference_scores.csv").read_bytes() == scores


def test_design_card_spec_is_the_seed_best_run_on_offline_backbones() -> None:
    """`capexp run experiments/20250725.json`: the seed's best run, substituting only what cannot run offline."""
    spec = load_spec(REPO / "experiments" / "20250725.json")
    best = load_spec(REPO / "experiments" / "20250725_233058.json")
    same = ["clip_config.image_size", "gpt2_config.visual_tokens_length", "gpt2_config.text_tokens_max_length",
            "training_config.subset_ratio", "training_config.batch_size", "training_config.num_epochs",
            "training_config.learning_rate"]
    assert {k: flatten(spec)[k] for k in same} == {k: flatten(best)[k] for k in same}
    assert (spec.clip_config.model, spec.gpt2_config.model, spec.data_paths.source) == (
        "efficientnet-lite0", "smollm2-135m", "flickr8k")
    assert spec.gpt2_config.n_layers_to_freeze == 30 - 1  # SmolLM2-135M has 30 blocks: all but the last frozen
    assert "--set clip_config.model=openai/clip-vit-base-patch32" in spec.notes
