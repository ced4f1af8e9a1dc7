"""The cut vocabulary: the same model on fewer tokens, and a tokenizer that speaks it."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from capexp.backbones import load_decoder
from capexp.model.vocabulary import restrict_vocabulary, training_vocabulary

CAPTIONS = [["A dog runs on the grass .", "a brown dog"], ["Two children play in the water ."]]


def test_cut_decoder_computes_the_full_decoders_logits_for_the_kept_tokens() -> None:
    torch.manual_seed(0)
    decoder, tokenizer = load_decoder("gpt2-tiny")
    full_ids = tokenizer("a dog runs in the water", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = decoder(input_ids=torch.tensor([full_ids])).logits  # (1, L, 50257)
    kept = training_vocabulary(tokenizer, CAPTIONS)
    cut = restrict_vocabulary(decoder, tokenizer, kept)

    assert len(kept) < 30 and decoder.get_output_embeddings().weight.shape[0] == len(kept)
    assert decoder.get_output_embeddings().weight is decoder.get_input_embeddings().weight  # still tied
    ids = cut(["a dog runs in the water"])["input_ids"][0]
    assert [kept[i] for i in ids] == full_ids
    with torch.no_grad():
        got = decoder(input_ids=torch.tensor([ids])).logits  # (1, L, len(kept))
    torch.testing.assert_close(got, expected[..., kept])


def test_untied_output_layer_is_cut_row_by_row() -> None:
    torch.manual_seed(0)
    decoder = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50257, tie_word_embeddings=False))
    _, tokenizer = load_decoder("gpt2-tiny")
    head = decoder.get_output_embeddings().weight.detach().clone()
    kept = training_vocabulary(tokenizer, CAPTIONS)
    restrict_vocabulary(decoder, tokenizer, kept)
    assert decoder.get_output_embeddings().weight is not decoder.get_input_embeddings().weight
    torch.testing.assert_close(decoder.get_output_embeddings().weight.detach(), head[kept])


def test_cut_tokenizer_round_trip_eos_and_unseen_words() -> None:
    decoder, tokenizer = load_decoder("gpt2-tiny")
    cut = restrict_vocabulary(decoder, tokenizer, training_vocabulary(tokenizer, CAPTIONS))
    assert len(cut) == decoder.config.vocab_size
    assert cut.kept[cut.eos_token_id] == tokenizer.eos_token_id == 50256 and cut.pad_token_id == cut.eos_token_id
    assert decoder.generation_config.eos_token_id == cut.eos_token_id
    (ids,) = cut(["Two dogs play in the grass"])["input_ids"]
    assert max(ids) < len(cut)
    # "Two", " play", " in", " the", " grass" were seen; " dogs" never was, so it cannot be written
    assert cut.batch_decode([ids]) == ["Two play in the grass"]
    assert cut.batch_decode([[*ids, cut.eos_token_id]], skip_special_tokens=True) == ["Two play in the grass"]


@pytest.mark.parametrize("name", ["gpt2-tiny", "gpt2-mini"])
def test_scratch_presets_load_offline_with_the_gpt2_tokenizer(name: str) -> None:
    decoder, tokenizer = load_decoder(name)
    assert tokenizer("a dog", add_special_tokens=False)["input_ids"] == [64, 3290]
    assert decoder.config.vocab_size == 50257 and decoder.config.n_layer == {"gpt2-tiny": 4, "gpt2-mini": 3}[name]
