"""Backbones by name: image encoders, causal-LM decoders, tokenizers and BERTScore models.

`presets` holds the registry and resolves a name (preset, local folder or hub id); `encoders`,
`decoders` and `bertscore` hold the loaders; `hub` finds weights in pip packages, folders and
the Hugging Face hub.
"""

from capexp.backbones.decoders import decoder_blocks
from capexp.backbones.encoders import EncoderCard
from capexp.backbones.presets import (
    PRESETS,
    DecoderFacts,
    Preset,
    decoder_depth,
    decoder_facts,
    list_backbones,
    load_decoder,
    preset_distributions,
    resolve_bertscore_model,
    resolve_encoder,
)

__all__ = [
    "PRESETS", "Preset", "EncoderCard", "resolve_encoder", "load_decoder", "decoder_blocks", "DecoderFacts",
    "decoder_facts", "decoder_depth",
    "resolve_bertscore_model", "list_backbones", "preset_distributions",
]
