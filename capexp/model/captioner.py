"""The ClipCap captioner: image features -> mapper -> k visual tokens -> causal LM decoder.

Read top to bottom in the order a batch flows: `ClipCap.prefix` (the mapper, see `capexp.model.mappers`) and
`ClipCap.forward` (the loss on caption tokens only); then `build_captioner`, the one way a spec becomes a model,
for training and for a checkpoint (`capexp.model.checkpoint`) alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from capexp.model.mappers import build_mapper

if TYPE_CHECKING:
    from capexp.backbones import EncoderCard
    from capexp.spec.schema import Spec

__all__ = ["ClipCap", "freeze_blocks", "load_spec_decoder", "build_captioner", "default_device"]


class ClipCap(nn.Module):
    """A mapper feeding k visual tokens to a causal language model; with `encoder`, the image encoder's last
    blocks train too, on its frozen trunk's cached output (`clip_config.train_last_blocks`)."""

    def __init__(self, decoder: nn.Module, mapper: nn.Module, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.decoder = decoder
        self.mapper = mapper
        self.encoder = encoder

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.get_input_embeddings()(input_ids)  # (B, L, D)

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """Visual tokens for a batch of image features (with `encoder`: of the encoder trunk's output)."""
        if self.encoder is not None:
            features = self.encoder(features)  # (B, C, h, w) -> (B, F) or (B, T, F)
        return self.mapper(features)  # (B, k, D)

    def _caption_states(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Decoder states (n, D) at the n positions that predict the caption tokens where `attention_mask` is 1,
        in row-major order (as `input_ids[attention_mask.bool()]`).

        Captions are right-padded, so columns past the longest caption are cut before the decoder runs.
        """
        width = int(attention_mask.sum(dim=1).max())
        input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]
        tokens = self.embed_tokens(input_ids)  # (B, L, D)
        embeds = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)  # (B, k+L, D)
        mask = torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1)  # (B, k+L)
        hidden = self.decoder.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (B, k+L, D)
        k = prefix.shape[1]
        return hidden[:, k - 1 : -1][attention_mask.bool()]  # position k+i-1 predicts caption token i

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy over caption tokens only: prefix and padding are masked out.

        `input_ids` (B, L) hold the caption followed by EOS, right-padded; `attention_mask` (B, L)
        is 1 on caption and EOS tokens.
        """
        states = self._caption_states(self.prefix(features), input_ids, attention_mask)  # (n, D)
        logits = self.decoder.get_output_embeddings()(states)  # (n, V): the LM head runs on caption and EOS positions only
        return nn.functional.cross_entropy(logits.float(), input_ids[attention_mask.bool()], label_smoothing=label_smoothing)

    def token_logprobs(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """log p (B, L) of each caption token given the visual tokens `prefix` (B, k, D) and the tokens
        before it; 0 where `attention_mask` is 0 (right padding)."""
        keep = attention_mask.bool()
        logits = self.decoder.get_output_embeddings()(self._caption_states(prefix, input_ids, attention_mask)).float()
        picked = logits.gather(-1, input_ids[keep].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)  # (n,)
        return torch.zeros(keep.shape, dtype=picked.dtype, device=picked.device).masked_scatter(keep, picked)


def freeze_blocks(blocks: nn.ModuleList, n: int | None) -> int:
    """Freeze the first `n` decoder blocks (None or 0: all trainable; `capexp.spec.checks` keeps `n` within the
    decoder's depth). Returns how many were frozen."""
    if not n:
        return 0
    for block in blocks[:n]:
        block.requires_grad_(False)
    return n


def load_spec_decoder(spec: Spec) -> tuple[Any, Any]:
    """The spec's decoder and tokenizer (`gpt2_config.model`, `gpt2_config.tokenizer`), loaded after seeding torch
    with `spec.seed`, so a randomly initialised preset gets the same weights in training and when its checkpoint loads."""
    from capexp.backbones import load_decoder

    torch.manual_seed(spec.seed)
    return load_decoder(spec.gpt2_config.model, spec.gpt2_config.tokenizer)


def build_captioner(spec: Spec, vocabulary: list[int] | None, *, card: EncoderCard,
                    decoder: tuple[Any, Any] | None = None) -> tuple[ClipCap, Any]:
    """The ClipCap `spec` describes, and its tokenizer.

    The decoder and tokenizer are `decoder` (training loads them before its run exists), else
    `load_spec_decoder(spec)`; the vocabulary is cut to the token ids `vocabulary` keeps (None: all);
    the mapper reads the `card`'s features; the first `n_layers_to_freeze` blocks are frozen; the encoder
    blocks the card leaves to train start from its ImageNet weights (built without touching the random state).
    """
    from capexp.backbones import decoder_blocks
    from capexp.model.vocabulary import restrict_vocabulary

    model, tokenizer = decoder or load_spec_decoder(spec)
    if vocabulary:
        tokenizer = restrict_vocabulary(model, tokenizer, vocabulary)
    cfg = spec.gpt2_config
    width = model.get_input_embeddings().embedding_dim
    mapper = build_mapper(cfg.mapper, card.feature_dim, width, cfg.visual_tokens_length, cfg.mapper_layers,
                          cfg.mapper_regions)
    freeze_blocks(decoder_blocks(model), cfg.n_layers_to_freeze)
    encoder = None
    if card.trained_blocks:
        with torch.random.fork_rng(devices=[]):  # its module draws init weights before loading ImageNet's
            encoder = card.load_tail()
    return ClipCap(model, mapper, encoder), tokenizer


def default_device(device: str | None = None) -> torch.device:
    """`device`, else CUDA when available, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
