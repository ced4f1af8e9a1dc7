"""Backbones by name: image encoders, causal-LM decoders, tokenizers and BERTScore models, and the
feature cache that encodes each image once per encoder.

A name is, in this order, a preset (offline weights shipped in pip packages, or tiny random models
for tests), an existing local folder, or a Hugging Face hub id. What a spec check needs to know of a
decoder (its positions and depth) is read here, once, without loading weights (`decoder_facts`).
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
