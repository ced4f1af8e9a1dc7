"""Self-critical training: a few steps raise the reward of sampled captions; specs and runs that use it."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from capexp.backbones import load_decoder, resolve_encoder
from capexp.cli import cli
from capexp.data import load_data
from capexp.model.decoding import sample_tokens
from capexp.backbones.feature_cache import encode_images
from capexp.model.captioner import build_captioner
from capexp.paths import project_file
from capexp.training.self_critical import SelfCritical, _caption_mask
from capexp.spec.schema import ScstConfig
from capexp.spec.loading import load_spec
from capexp.training.cross_entropy import CaptionData, _Batches
from capexp.model.vocabulary import training_vocabulary

QUICKSTART = project_file("experiments", "quickstart.json")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mean_sampled_reward(scst: SelfCritical, images: torch.Tensor, samples: int = 4) -> float:
    """Mean CIDEr-D of `samples` captions per image, drawn with a fixed generator (the same draw each call)."""
    model = scst.model
    with torch.no_grad():
        prefix = model.prefix(scst.features[images]).repeat_interleave(samples, dim=0)
        tokens = sample_tokens(model.decoder, prefix, scst.eos, scst.max_tokens, torch.Generator().manual_seed(7))
    return float(scst.rewards(tokens, images.repeat_interleave(samples)).mean())


def test_a_few_self_critical_steps_raise_the_mean_sampled_reward_on_quickstart_images() -> None:
    spec = load_spec(QUICKSTART, ["data_paths.num_train=256", "training_config.num_epochs=2", "training_config.warmup_steps=0"])
    torch.manual_seed(spec.seed)
    splits = load_data(spec)
    card = resolve_encoder(spec.clip_config.model, spec.clip_config.image_size, spec.clip_config.features)
    train = CaptionData([im.image_id for im in splits.train.images],
                        encode_images(card, splits.train.images, progress=False).features, splits.train.captions)
    decoder = load_decoder(spec.gpt2_config.model, spec.gpt2_config.tokenizer)
    model, tokenizer = build_captioner(spec, training_vocabulary(decoder[1], train.references), card=card,
                                       decoder=decoder)
    batches = _Batches(model, tokenizer, train, spec, torch.device("cpu"))
    for epoch in (1, 2):  # a partly trained captioner: its samples still vary
        batches.epoch(epoch)

    cfg = ScstConfig(samples=5, learning_rate=5e-4, batch_size=32)
    scst = SelfCritical(model, tokenizer, train.features, train.references, cfg, max_tokens=12, weight_decay=0.0,
                        grad_clip=1.0, seed=0, device=torch.device("cpu"), encoder_lr_ratio=1.0)  # no encoder blocks here
    model.eval()
    images = torch.arange(64)
    before = _mean_sampled_reward(scst, images)
    rewards = [scst.step(torch.arange(start, start + 32))[0] for start in range(0, 256, 32) for _ in range(2)]
    after = _mean_sampled_reward(scst, images)
    assert after > before * 1.1, (before, after, rewards)


def test_caption_mask_covers_tokens_up_to_the_first_eos() -> None:
    eos = 0
    tokens = torch.tensor([[5, 6, 0, 0], [5, 0, 7, 0], [5, 6, 7, 8]])
    assert _caption_mask(tokens, eos).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


def test_a_run_with_self_critical_epochs_logs_reward_and_baseline(tracking_uri: str, tiny) -> None:
    args = tiny.args("id=scst", 'training_config.scst={"epochs": 2, "baseline": "greedy", "batch_size": 8}')
    result = CliRunner().invoke(cli, ["run", str(QUICKSTART), *args])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("capexp").experiment_id])[0]
    reward = client.get_metric_history(run.info.run_id, "scst_reward")
    assert [m.step for m in reward] == [2, 3]  # after the cross-entropy epoch
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1]
    assert "training_config.scst.baseline" in run.data.params
    assert run.data.tags.get("capexp.pruned") is None


SCST = ('training_config.scst={"epochs": 1, "batch_size": 8}', "training_config.best_metric=val_loss")


def _history(client: MlflowClient, run_name: str, metric: str) -> list[tuple[int, float]]:
    run = client.search_runs([client.get_experiment_by_name("capexp").experiment_id],
                             filter_string=f"attributes.run_name = '{run_name}'")[0]
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric)]


def test_self_critical_epochs_from_a_finished_run_equal_those_of_one_run_that_does_both(tracking_uri: str, tiny) -> None:
    runner, client = CliRunner(), MlflowClient(tracking_uri)
    both = runner.invoke(cli, ["run", str(QUICKSTART), *tiny.args(*SCST, "id=both")])
    assert both.exit_code == 0, both.output
    first = runner.invoke(cli, ["run", str(QUICKSTART), *tiny.args("id=xe")])
    assert first.exit_code == 0, first.output
    scst_only = tiny.args(*SCST, "training_config.num_epochs=0", "training_config.init_from=xe")

    other = runner.invoke(cli, ["run", str(QUICKSTART), *scst_only, "--set", "id=other",
                                "--set", "gpt2_config.visual_tokens_length=6"])
    assert other.exit_code == 2  # a model built otherwise: refused before a run exists
    assert "gpt2_config.visual_tokens_length (4 there, 6 here)" in " ".join(other.output.split())
    experiment = client.get_experiment_by_name("capexp").experiment_id
    assert not client.search_runs([experiment], "attributes.run_name = 'other'")

    missing = runner.invoke(cli, ["run", str(QUICKSTART), *scst_only, "--set", "training_config.init_from=no-such-run"])
    assert missing.exit_code == 2
    assert "`training_config.init_from`: run 'no-such-run': no run is named" in " ".join(missing.output.split())

    second = runner.invoke(cli, ["run", str(QUICKSTART), *scst_only, "--set", "id=scst-only"])
    assert second.exit_code == 0, second.output
    assert _history(client, "scst-only", "scst_reward") == [(1, _history(client, "both", "scst_reward")[0][1])]
    assert _history(client, "scst-only", "val_loss") == [(1, _history(client, "both", "val_loss")[1][1])]
    run = client.search_runs([experiment], "attributes.run_name = 'scst-only'")[0]
    assert run.data.params["training_config.init_from"] == "xe"
    assert "checkpoint" in run.data.tags["capexp.init_from"]


def test_zero_cross_entropy_epochs_without_self_critical_ones_is_nothing_to_train() -> None:
    result = CliRunner().invoke(cli, ["validate", str(QUICKSTART), "--set", "training_config.num_epochs=0"])
    assert result.exit_code == 2
    assert "nothing to train" in result.output


def test_train_loss_cannot_pick_the_checkpoint_of_a_self_critical_run() -> None:
    result = CliRunner().invoke(cli, ["validate", str(QUICKSTART), "--set", 'training_config.scst={"epochs": 1}',
                                      "--set", "training_config.best_metric=train_loss"])
    assert result.exit_code == 2
    assert "self-critical epochs do not log" in result.output
