"""`clip_config.train_last_blocks`: an EfficientNet-Lite's last blocks train on its trunk's cached output."""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from capexp.backbones import resolve_encoder
from capexp.backbones.presets import EFFICIENTNETS

TRAINED = ("clip_config.train_last_blocks=2", "gpt2_config.n_layers_to_freeze=1", "training_config.num_epochs=3",
           "training_config.encoder_learning_rate=0.01", 'id="blocks"')


@pytest.mark.parametrize("name", list(EFFICIENTNETS))
def test_cached_trunk_then_trained_blocks_equal_the_whole_encoder(name: str, make_photos, tmp_path: Path) -> None:
    from capexp.backbones.feature_cache import encode_images
    from capexp.data.types import ImageRef

    images = [ImageRef.from_file(p) for p, _ in make_photos(tmp_path / "photos", 3, px=96)]
    for features in ("pooled", "grid"):
        whole = resolve_encoder(name, (96, 96), features)
        cut = resolve_encoder(name, (96, 96), features, 2)
        trunk = encode_images(cut, images, progress=False)  # through the cache (float32 on disk)
        with torch.no_grad():
            direct = whole.load()(whole.preprocess([im.load() for im in images]))
            continued = cut.load_tail().eval()(trunk.features)
        torch.testing.assert_close(continued, direct, atol=1e-5, rtol=0)
    # one cache entry per cut, shared by pooled and grid: the grid pass above read the pooled pass's trunk
    assert trunk.n_cached == 3
    assert len({resolve_encoder(name, (96, 96), "pooled", n).cache_id for n in (0, 1, 2)}) == 3


@pytest.mark.parametrize(("changes", "message"), [
    (("clip_config.train_last_blocks=17",), r"efficientnet-lite0 has 16 blocks\. Use a value from 0 \(frozen\) to 16"),
    (("clip_config.model=openai/clip-vit-base-patch32", "clip_config.train_last_blocks=1"),
     r"'openai/clip-vit-base-patch32' cannot be cut.*efficientnet-lite0, efficientnet-lite1, efficientnet-lite2"),
    (("clip_config.features=grid", "training_config.feature_crop=0.7", "clip_config.train_last_blocks=1"),
     r"feature_crop.*train_last_blocks trains the blocks that make the grid"),
])
def test_specs_that_cannot_train_encoder_blocks_are_refused_before_a_run(tiny, changes, message, tracking_uri) -> None:
    from capexp.cli import cli

    result = CliRunner().invoke(cli, ["validate", str(tiny.base), *tiny.args(*changes)])
    assert result.exit_code == 2, result.output
    assert re.search(message, " ".join(result.output.split())), result.output


@pytest.fixture(scope="module")
def trained(shared_store, tiny, tiny_flickr8k: Path) -> Iterator[tuple[str, str]]:
    """A tiny run on Flickr8k-layout photos that trains its encoder's last 2 blocks and freezes its first decoder
    block: (store uri, run id)."""
    from capexp.spec.schema import Flickr8kData
    from capexp.training.run import run_spec

    spec = tiny.spec(*TRAINED)
    spec.data_paths = Flickr8kData(source="flickr8k", root=str(tiny_flickr8k))
    with shared_store() as uri:
        yield uri, run_spec(spec).run_id


def test_trained_blocks_change_and_frozen_weights_do_not(trained) -> None:
    from safetensors import safe_open

    from capexp.backbones.decoders import decoder_blocks
    from capexp.model.captioner import load_spec_decoder
    from capexp.model.checkpoint import find_checkpoint

    uri, run_id = trained
    checkpoint = find_checkpoint(run_id, tracking_uri=uri)
    with safe_open(checkpoint.folder / "model.safetensors", framework="pt") as f:
        encoder_keys = {k for k in f.keys() if k.startswith("encoder.")}
    # the checkpoint holds the 2 trained blocks and the head, never the frozen trunk
    assert {k.split(".")[1] for k in encoder_keys} == {"_blocks", "_conv_head", "_bn1"}
    assert {int(k.split(".")[2]) for k in encoder_keys if k.startswith("encoder._blocks.")} == {0, 1}

    model = checkpoint.load("cpu").model
    imagenet = checkpoint.card.load_tail().state_dict()
    trained_state = model.encoder.state_dict()
    assert imagenet.keys() == trained_state.keys()
    changed = {k for k in imagenet if "running_" not in k and "num_batches" not in k
               and not torch.equal(imagenet[k], trained_state[k])}
    assert any(".weight" in k and "conv" in k for k in changed)  # the blocks trained
    for k in imagenet:  # batch norms kept ImageNet's statistics
        if "running_" in k:
            assert torch.equal(imagenet[k], trained_state[k]), k
    fresh, _ = load_spec_decoder(checkpoint.spec)
    for (name, before), after in zip(decoder_blocks(fresh)[0].named_parameters(), decoder_blocks(model.decoder)[0].parameters()):
        assert torch.equal(before, after), name  # the frozen decoder block


def test_trained_blocks_round_trip_and_caption_a_folder_as_evaluate_does(trained, tiny_flickr8k, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    from capexp.evaluation.evaluate import evaluate_run
    from capexp.model.checkpoint import find_checkpoint
    from capexp.serving.folder import caption_folder

    uri, run_id = trained
    evaluate_run(run_id, split="test", tracking_uri=uri)
    client = MlflowClient(uri)
    with open(client.download_artifacts(run_id, "evaluation/test_captions.csv", str(tmp_path)), newline="") as f:
        by_evaluate = {r["image_id"]: r["caption"] for r in csv.DictReader(f)}
    folder = tmp_path / "test-photos"
    folder.mkdir()
    for line in (tiny_flickr8k / "Flickr8k_text" / "Flickr_8k.testImages.txt").read_text().split():
        shutil.copy(tiny_flickr8k / "Flicker8k_Dataset" / line, folder / line)
    checkpoint = find_checkpoint(run_id, tracking_uri=uri)
    caption_folder(folder, [checkpoint], tmp_path / "captions.csv")
    with (tmp_path / "captions.csv").open(newline="") as f:
        by_folder = {r["image_id"]: r["caption"] for r in csv.DictReader(f)}
    assert by_folder == by_evaluate and len(by_folder) == 3
    # serving encodes the pixels directly (no cache): the same captions
    from PIL import Image

    captioner = checkpoint.load("cpu")
    names = sorted(by_folder)
    assert captioner.caption_images([Image.open(folder / n) for n in names]) == [by_folder[n] for n in names]
    run = client.get_run(run_id)
    assert run.data.params["clip_config.train_last_blocks"] == "2"
    assert float(run.data.params["training_config.encoder_learning_rate"]) == 0.01


def test_a_study_refuses_a_trained_block_count_past_the_depth_before_any_trial(tiny, tmp_path, tracking_uri) -> None:
    import json

    from capexp.errors import CapexpError
    from capexp.study import run_study

    space = tmp_path / "blocks.json"
    space.write_text(json.dumps({"params": {"clip_config.train_last_blocks": {"choices": [0, 20]}}}))
    with pytest.raises(CapexpError, match=r"`params.clip_config.train_last_blocks` value 20 does not fit the base "
                                          r"spec: .*efficientnet-lite0 has 16 blocks"):
        run_study(tiny.base, trials=2, name="blocks", space=space, storage=str(tmp_path / "s.journal"),
                  overrides=tiny.sets())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])  # no run was created
