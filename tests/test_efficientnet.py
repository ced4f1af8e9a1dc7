"""The EfficientNet-Lite presets: networks built from their state dicts, real weights, and their feature cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from capexp.backbones import resolve_encoder
from capexp.backbones.efficientnet import Stage, load_efficientnet, stage_table
from capexp.backbones.presets import EFFICIENTNETS

LITES = list(EFFICIENTNETS)
DOGS = ["1001773457_577c3a7d70.jpg", "1019077836_6fc9b15408.jpg", "1022975728_75515238d8.jpg",
        "1026685415_0431cbf574.jpg", "1030985833_b0902ea560.jpg", "1012212859_01547e3f17.jpg"]
CAT = "3229898555_16877f5180.jpg"
# EfficientNet-B0's stages (repeats, kernel, stride, expand, in, out), from the paper, and the (width, depth)
# coefficients of the Lite family in TensorFlow's efficientnet_lite_builder.py
B0 = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
      (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
SCALING = {"efficientnet-lite0": (1.0, 1.0), "efficientnet-lite1": (1.0, 1.1), "efficientnet-lite2": (1.1, 1.2)}


def _scaled_b0(width: float, depth: float) -> list[Stage]:
    """B0 scaled as Lite scales it: channels to multiples of 8, blocks rounded up; stem, the first and the
    last stage's depth kept."""

    def channels(c: int) -> int:
        c = 32 if c == 32 else c * width  # the stem is never scaled
        rounded = max(8, int(c + 4) // 8 * 8)
        return int(rounded + 8 if rounded < 0.9 * c else rounded)

    last = len(B0) - 1
    return [Stage(r if i in (0, last) else math.ceil(r * depth), k, s, e, channels(c_in), channels(c_out))
            for i, (r, k, s, e, c_in, c_out) in enumerate(B0)]


def _state(name: str) -> dict[str, torch.Tensor]:
    return torch.load(resolve_encoder(name, (64, 64)).source, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", LITES)
def test_stage_table_read_from_the_weights_is_b0_scaled(name: str) -> None:
    assert stage_table(_state(name)) == _scaled_b0(*SCALING[name])


def test_weights_missing_a_stage_are_refused() -> None:
    state = {k: v for k, v in _state("efficientnet-lite0").items() if not k.startswith("_blocks.15.")}
    with pytest.raises(ValueError, match="7 stages; these weights have 6"):
        stage_table(state)


@pytest.mark.parametrize("name", LITES)
def test_preset_loads_strictly_and_encodes_at_its_native_size(name: str) -> None:
    preset = EFFICIENTNETS[name]
    size = (preset.native_size, preset.native_size)
    pooled, grid = resolve_encoder(name, size, "pooled"), resolve_encoder(name, size, "grid")
    assert pooled.feature_dim == grid.feature_dim == preset.feature_dim
    net = load_efficientnet(Path(pooled.source))  # strict=True: every key of the state dict, no other
    assert net._conv_head.out_channels == preset.feature_dim
    pixels = pooled.preprocess([Image.new("RGB", (400, 300), (120, 90, 60))])
    assert pixels.shape == (1, 3, *size)
    with torch.inference_mode():
        p, g = pooled.load()(pixels), grid.load()(pixels)
    cells = math.ceil(preset.native_size / 32) ** 2
    assert p.shape == (1, preset.feature_dim) and g.shape == (1, cells, preset.feature_dim)
    torch.testing.assert_close(p, g.mean(dim=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", LITES)
def test_preset_recognizes_flickr8k_dogs_and_a_cat(name: str, shared_data: Path) -> None:
    size = EFFICIENTNETS[name].native_size
    card = resolve_encoder(name, (size, size))
    net = load_efficientnet(Path(card.source))
    photos = [Image.open(shared_data / "flickr8k" / "Flicker8k_Dataset" / n) for n in DOGS + [CAT]]
    with torch.inference_mode():
        classes = net(card.preprocess(photos)).argmax(-1).tolist()  # the ImageNet head
    assert all(151 <= c <= 268 for c in classes[:-1]), classes  # ImageNet dog breeds
    assert 281 <= classes[-1] <= 285, classes  # ImageNet domestic cats


def test_encoders_and_sizes_never_share_a_cache_entry() -> None:
    cards = [resolve_encoder(n, s, f) for n in LITES for s in [(224, 224), (240, 240), (224, 240)]
             for f in ("pooled", "grid")]
    assert len({c.cache_id for c in cards}) == len(cards) == 18
    assert resolve_encoder("efficientnet-lite1", (224, 224)).cache_id == cards[6].cache_id  # stable


def test_same_images_encoded_once_per_encoder(make_photos, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from capexp.backbones.feature_cache import encode_images
    from capexp.data.types import ImageRef

    monkeypatch.setenv("CAPEXP_CACHE", str(tmp_path / "cache"))
    images = [ImageRef.from_file(p) for p, _ in make_photos(tmp_path / "photos", 2, px=64)]
    first = {n: encode_images(resolve_encoder(n, (64, 64)), images, progress=False) for n in LITES}
    again = {n: encode_images(resolve_encoder(n, (64, 64)), images, progress=False) for n in LITES}
    assert [e.n_encoded for e in first.values()] == [2, 2, 2]  # no encoder is served another's features
    assert [e.n_cached for e in again.values()] == [2, 2, 2]
    for n in LITES:
        torch.testing.assert_close(again[n].features, first[n].features)
    lite0, lite1, lite2 = (e.features for e in first.values())
    assert not torch.allclose(lite0, lite1, atol=1e-2) and not torch.allclose(lite1, lite2, atol=1e-2)


def test_cli_backbones_lists_the_lite_presets() -> None:
    from capexp.cli import cli

    result = CliRunner().invoke(cli, ["backbones"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["encoders"] == ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
