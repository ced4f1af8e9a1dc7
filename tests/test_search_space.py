"""Search spaces: the default holds the seed's values, freeze counts fit the decoder, bad files say why."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from capexp.errors import CapexpError
from capexp.study.space import FREEZE_KEY, Categorical, IntRange, SearchSpace, load_space
from capexp.spec.loading import flatten, load_spec

REPO = Path(__file__).resolve().parents[1]
SEEDS = sorted((REPO / "experiments").glob("2025????_??????.json"))  # the six seed runs
KNOBS = ["clip_config.image_size", "gpt2_config.visual_tokens_length", FREEZE_KEY, "training_config.subset_ratio"]


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(data))
    return path


def test_default_space_searches_the_seed_knobs_and_holds_every_seed_value() -> None:
    space = load_space()
    assert list(space.params) == KNOBS
    assert len(SEEDS) == 6
    for path in SEEDS:
        flat = flatten(load_spec(path))
        for key in KNOBS:
            assert flat[key] in space.params[key].choices, f"{path.name}: {key}={flat[key]}"
    assert space.sampler.name == "tpe" and space.pruner.name == "median"


def test_freeze_choices_are_rescaled_to_the_decoder_depth() -> None:
    space = load_space()
    assert space.fit_to_depth(12, "x").params[FREEZE_KEY].choices == [6, 10, 11]  # GPT-2: the seed's values
    assert space.fit_to_depth(4, "x").params[FREEZE_KEY].choices == [2, 3, 4]  # gpt2-tiny
    assert space.fit_to_depth(30, "x").params[FREEZE_KEY].choices == [15, 25, 28]  # SmolLM2-135M
    for depth in range(1, 40):
        choices = space.fit_to_depth(depth, "x").params[FREEZE_KEY].choices
        assert all(0 <= c <= depth for c in choices)
    # An enqueued seed spec's freeze count lands on the same rescaled grid.
    assert [space.fit_value(FREEZE_KEY, v, 4) for v in (6, 10, 11)] == [2, 3, 4]


def test_quickstart_decoder_depth_bounds_the_default_grid() -> None:
    from capexp.backbones import decoder_blocks, load_decoder

    spec = load_spec(REPO / "experiments" / "quickstart.json")
    depth = len(decoder_blocks(load_decoder(spec.gpt2_config.model)[0]))
    choices = load_space().fit_to_depth(depth, "x").params[FREEZE_KEY].choices
    assert len(choices) >= 2 and max(choices) <= depth


def test_plain_freeze_choices_beyond_depth_are_cut_and_ranges_clamped(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, {"params": {FREEZE_KEY: {"choices": [None, 1, 6, 11]}}}))
    assert space.fit_to_depth(4, "x").params[FREEZE_KEY].choices == [None, 1]
    with pytest.raises(CapexpError, match=r"no choice within the decoder's 4 blocks"):
        load_space(_write(tmp_path, {"params": {FREEZE_KEY: {"choices": [6, 11]}}})).fit_to_depth(4, "s.json")
    ranged = load_space(_write(tmp_path, {"params": {FREEZE_KEY: {"type": "int", "low": 1, "high": 11}}}))
    assert ranged.fit_to_depth(4, "x").params[FREEZE_KEY] == IntRange(type="int", low=1, high=4)


def test_list_choices_round_trip_through_optuna() -> None:
    param = Categorical(choices=[[50, 50], [224, 224]])
    assert param.encode([224, 224]) == "[224, 224]"
    assert param.suggest(optuna.trial.FixedTrial({"size": "[224, 224]"}), "size") == [224, 224]
    with pytest.raises(ValueError, match="not one of the choices"):
        param.encode([64, 64])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"params": {"gpt2_config.visual_token_length": {"choices": [2]}}},
         r"`gpt2_config.visual_token_length` is not a spec key; did you mean `gpt2_config.visual_tokens_length`"),
        ({"params": {"training_config.subset_ratio": {"choices": [0.1]}}, "smapler": {}}, r"`smapler` is not a search-space key"),
        ({"params": {"training_config.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-5}}},
         r"`params.training_config.learning_rate`: `low` \(0.001\) must not exceed `high`"),
        ({"params": {"gpt2_config.visual_tokens_length": {"choices": [2, 2]}}},
         r"`params.gpt2_config.visual_tokens_length.choices`: must not repeat a value"),
        ({"params": {"gpt2_config.visual_tokens_length": {"choices": [2], "reference_depth": 12}}},
         r"`reference_depth` only applies to `gpt2_config.n_layers_to_freeze`"),
        ({"sampler": {"name": "grid"}, "params": {"training_config.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}},
         r"the grid sampler needs `choices` for every param, but training_config.learning_rate is a range"),
        ({"pruner": {"name": "hyperband", "reduction_factor": 1}, "params": {"seed": {"choices": [0, 1]}}},
         r"`pruner.reduction_factor`: input should be greater than or equal to 2"),
        ({"params": {}}, r"`params`"),
        ({"params": {"gpt2_config.mapper": {"choices": ["regions"], "when": {"clip_config.features": ["grid"]}},
                     "clip_config.features": {"choices": ["pooled", "grid"]}}},
         r"`gpt2_config.mapper.when` names `clip_config.features`, which is searched after it: list `clip_config.features` first"),
        ({"params": {"gpt2_config.mapper": {"choices": ["regions"], "when": {"clip_config.feature": ["grid"]}}}},
         r"`gpt2_config.mapper.when`: `clip_config.feature` is not a spec key"),
        ({"params": {"gpt2_config.mapper": {"choices": ["regions"], "when": {"clip_config.features": []}}}},
         r"`when.clip_config.features` lists no value"),
        ({"sampler": {"name": "grid"}, "params": {"seed": {"choices": [0, 1], "when": {"clip_config.features": ["grid"]}}}},
         r"the grid sampler .* cannot leave a param out: seed has `when`"),
    ],
)
def test_bad_space_files_name_the_file_and_field(tmp_path: Path, data: dict, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(CapexpError, match=message) as err:
        load_space(path)
    assert str(path) in str(err.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(CapexpError, match="does not exist"):
        load_space(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(CapexpError, match=r"bad.json is not valid JSON"):
        load_space(bad)


def test_a_conditional_param_reads_earlier_values_then_the_base() -> None:
    from capexp.study.params import active_values

    space = SearchSpace.model_validate({"params": {
        "clip_config.features": {"choices": ["pooled", "grid"]},
        "gpt2_config.mapper": {"choices": ["regions", "transformer"], "when": {"clip_config.features": ["grid"]}},
        "training_config.encoder_learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3,
                                                  "when": {"clip_config.train_last_blocks": [1, 2]}},
    }})
    picked = {"clip_config.features": "grid", "gpt2_config.mapper": "regions", "training_config.encoder_learning_rate": 1e-4}
    base = {"clip_config.features": "pooled", "clip_config.train_last_blocks": 0}
    pick = lambda key, _: picked[key]  # noqa: E731
    assert active_values(space.params, base, pick) == {"clip_config.features": "grid", "gpt2_config.mapper": "regions"}
    assert active_values(space.params, {**base, "clip_config.train_last_blocks": 2}, pick) == picked
    picked["clip_config.features"] = "pooled"  # the mapper's condition reads the value picked, not the base's
    assert active_values(space.params, {**base, "clip_config.features": "grid"}, pick) == {"clip_config.features": "pooled"}


def test_the_flickr8k_space_holds_the_hand_tuned_base_as_its_control() -> None:
    from capexp.spec.loading import load_spec
    from capexp.study.control import control_values

    space = load_space(REPO / "studies" / "flickr8k.json").fit_to_depth(3, "flickr8k.json")  # gpt2-mini
    base = load_spec(REPO / "experiments" / "flickr8k-best.json")
    values = control_values(base, space)
    for key, value in values.items():  # inside the space: the control is a trial TPE learns from
        space.params[key].encode(value)
    assert "gpt2_config.mapper" not in values  # pooled features: the regions mapper is not searched
    assert ("training_config.encoder_learning_rate" in values) == bool(base.clip_config.train_last_blocks)
    assert values["training_config.scst"] == base.training_config.scst.model_dump(mode="json")  # its 3 epochs, not off


def test_a_space_extends_another_merging_params_and_budget(tmp_path: Path) -> None:
    parent = _write(tmp_path, {"notes": "parent", "pruner": {"name": "median"}, "budget": {"training_config.num_epochs": 1},
                               "params": {"seed": {"choices": [0, 1]}, "training_config.learning_rate": {"choices": [1e-3]}}})
    child = tmp_path / "child.json"
    child.write_text(json.dumps({"extends": parent.name, "pruner": {"name": "none"},
                                 "budget": {"training_config.subset_ratio": 0.5},
                                 "params": {"training_config.learning_rate": {"choices": [1e-3, 3e-3]}}}))
    space = load_space(child)
    assert space.notes == "parent" and space.pruner.name == "none"
    assert space.budget == {"training_config.num_epochs": 1, "training_config.subset_ratio": 0.5}
    assert list(space.params) == ["seed", "training_config.learning_rate"]  # the parent's order, the child's values
    assert space.params["training_config.learning_rate"].choices == [1e-3, 3e-3]

    parent.write_text(json.dumps({"extends": child.name, "params": {"seed": {"choices": [0]}}}))
    with pytest.raises(CapexpError, match="Search-space files extend each other in a cycle"):
        load_space(child)
    parent.write_text("[1, 2]")
    with pytest.raises(CapexpError, match=r"space.json \(extended by .*child.json\) must hold a JSON object"):
        load_space(child)
    child.write_text(json.dumps({"extends": "gone.json"}))
    with pytest.raises(CapexpError, match=r"gone.json \(extended by .*child.json\) does not exist"):
        load_space(child)


def test_the_flickr8k_fidelity_check_and_cost_study_search_the_study_space() -> None:
    study = load_space(REPO / "studies" / "flickr8k.json")
    check = load_space(REPO / "studies" / "flickr8k-fidelity.json")
    cost = load_space(REPO / "studies" / "flickr8k-cost.json")
    for other in (check, cost):  # the same space and budget as the study, other random configurations, unpruned
        assert other.params == study.params and other.budget == study.budget
        assert other.sampler.seed != study.sampler.seed and other.pruner.name == "none"
    assert check.sampler.seed != cost.sampler.seed
    assert [(o.metric, o.direction) for o in cost.objective] == [("cider", "maximize"), ("train_minutes", "minimize")]
