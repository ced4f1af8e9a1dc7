"""A decoder cut down to the tokens its training captions use (`gpt2_config.vocabulary: "train"`).

GPT-2's 50,257-token output layer dominates a small captioner's step, yet Flickr8k's captions
use about 7,000 of those tokens. `restrict_vocabulary` keeps only the rows of the input and
output embeddings for those tokens (pretrained rows stay as they were) and returns a tokenizer
that speaks the cut vocabulary, so training, decoding and inference code stay unchanged.
Checkpoints record the kept ids (`capexp.json` "vocabulary") and loading cuts the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["CutTokenizer", "training_vocabulary", "restrict_vocabulary"]


class CutTokenizer:
    """A tokenizer seen through a cut vocabulary: id i stands for the full-vocabulary id `kept[i]`.

    Text tokens outside the cut vocabulary (words never seen in training) are left out when
    encoding; they cannot be predicted anyway.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, kept: list[int]) -> None:
        self.tokenizer, self.kept = tokenizer, list(kept)
        self._index = {token: i for i, token in enumerate(self.kept)}
        self.eos_token_id = self._index[tokenizer.eos_token_id]
        self.pad_token_id = self._index[tokenizer.pad_token_id]
        self.bos_token_id = self._index.get(tokenizer.bos_token_id)  # None when the cut dropped it

    def __len__(self) -> int:
        return len(self.kept)

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        full = self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        return {"input_ids": [[self._index[t] for t in seq if t in self._index] for seq in full]}

    def batch_decode(self, sequences: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        full = [[self.kept[t] for t in seq] for seq in sequences]
        return self.tokenizer.batch_decode(full, skip_special_tokens=skip_special_tokens)


def training_vocabulary(tokenizer: PreTrainedTokenizerBase, captions: list[list[str]]) -> list[int]:
    """The sorted full-vocabulary ids of every token in `captions`, plus EOS and pad."""
    texts = [caption for refs in captions for caption in refs]
    seen = {t for seq in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in seq}
    return sorted(seen | {tokenizer.eos_token_id, tokenizer.pad_token_id})


def restrict_vocabulary(decoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, kept: list[int]) -> CutTokenizer:
    """Cut `decoder`'s input and output embeddings to the rows `kept`, in place; its tokenizer for them.

    Tied embeddings stay tied; an output bias is cut like the weights.
    """
    import torch

    index = torch.tensor(kept, dtype=torch.long)
    old_in, old_out = decoder.get_input_embeddings(), decoder.get_output_embeddings()
    weight = old_in.weight
    new_in = torch.nn.Embedding(len(kept), weight.shape[1], device=weight.device, dtype=weight.dtype)
    new_in.weight.data.copy_(weight.data[index])
    new_out = torch.nn.Linear(weight.shape[1], len(kept), bias=old_out.bias is not None,
                              device=weight.device, dtype=old_out.weight.dtype)
    if old_out.weight is weight:
        new_out.weight = new_in.weight
    else:
        new_out.weight.data.copy_(old_out.weight.data[index])
    if old_out.bias is not None:
        new_out.bias.data.copy_(old_out.bias.data[index])
    decoder.set_input_embeddings(new_in)
    decoder.set_output_embeddings(new_out)
    cut = CutTokenizer(tokenizer, kept)
    decoder.config.vocab_size = len(kept)
    special = {"pad_token_id": cut.pad_token_id, "eos_token_id": cut.eos_token_id, "bos_token_id": cut.bos_token_id}
    for config in (decoder.config, decoder.generation_config):
        if config is not None:
            for name, value in special.items():
                setattr(config, name, value)
    return cut
