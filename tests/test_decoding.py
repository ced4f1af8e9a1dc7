"""Greedy and beam-search captioning against slow references, transformers' generate and brute force."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from capexp.model.decoding import _beam_search, _DecoderStepper, _greedy, generate_captions
from capexp.model.captioner import ClipCap
from capexp.model.mappers import MlpMapper

EOS = 50256  # GPT-2's <|endoftext|>
FEATURE_DIM, WIDTH, K = 16, 64, 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: thread hand-offs cost more than they save (10x on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """The real GPT-2 tokenizer, offline (shipped with the `gpt2-tiny` preset), cached under the test's tmp."""
    from capexp.backbones import load_decoder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAPEXP_CACHE", str(tmp_path_factory.getbasetemp() / "capexp-cache"))
        return load_decoder("gpt2-tiny")[1]


def _tiny_captioner(kind: str, vocab: int = 50257, eos: int = EOS, eos_bias: float = 8.0) -> ClipCap:
    """A random ClipCap with peaky next-token distributions; `eos_bias` makes EOS win at some steps."""
    torch.manual_seed(0)
    if kind == "gpt2":
        decoder = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab, n_layer=2, n_embd=WIDTH, n_head=2, initializer_range=0.3,
                bos_token_id=eos, eos_token_id=eos,
            )
        )
    else:
        decoder = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab, hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3, bos_token_id=eos, eos_token_id=eos,
            )
        )
    bias = torch.zeros(vocab)
    bias[eos] = eos_bias
    decoder.lm_head.register_forward_hook(lambda module, args, logits: logits + bias)
    return ClipCap(decoder, MlpMapper(FEATURE_DIM, WIDTH, K)).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def captioner(request: pytest.FixtureRequest) -> ClipCap:
    return _tiny_captioner(request.param)


@pytest.fixture(scope="module")
def features() -> torch.Tensor:
    return torch.randn(8, FEATURE_DIM, generator=torch.Generator().manual_seed(1))  # (N, F)


@torch.inference_mode()
def _uncached_greedy(model: ClipCap, features: torch.Tensor, max_tokens: int) -> list[list[int]]:
    """One image at a time, the whole sequence re-run every step, argmax, stop at EOS."""
    out = []
    for row in features:
        embeds = model.prefix(row[None])  # (1, k, D)
        ids: list[int] = []
        for _ in range(max_tokens):
            token = int(model.decoder(inputs_embeds=embeds).logits[0, -1].argmax())
            ids.append(token)
            if token == EOS:
                break
            embeds = torch.cat([embeds, model.embed_tokens(torch.tensor([[token]]))], dim=1)
        out.append(ids)
    return out


def _texts(tokenizer, sequences: list[list[int]]) -> list[str]:
    cut = [s[: s.index(EOS)] if EOS in s else s for s in sequences]
    return [t.strip() for t in tokenizer.batch_decode(cut, skip_special_tokens=True)]


@torch.inference_mode()
def _scores(model: ClipCap, features: torch.Tensor, seqs: list[list[int]], length_penalty: float, eos: int = EOS) -> list[float]:
    """sum(log p) / length ** length_penalty of each token sequence (through its first EOS), one forward pass."""
    seqs = [s[: s.index(eos) + 1] if eos in s else s for s in seqs]
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.tensor([s + [eos] * (int(lengths.max()) - len(s)) for s in seqs])  # (N, L)
    prefix = model.prefix(features)  # (N, k, D)
    embeds = torch.cat([prefix, model.embed_tokens(ids[:, :-1])], dim=1)
    logp = model.decoder(inputs_embeds=embeds).logits[:, prefix.shape[1] - 1 :].log_softmax(-1)  # (N, L, V)
    token_logp = logp.gather(2, ids[..., None])[..., 0]  # (N, L)
    total = (token_logp * (torch.arange(ids.shape[1]) < lengths[:, None])).sum(dim=1)
    return (total / lengths.double() ** length_penalty).tolist()


def _hf_generate(model: ClipCap, prefix: torch.Tensor, max_tokens: int, **kwargs) -> list[list[int]]:
    out = model.decoder.generate(
        inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
        max_new_tokens=max_tokens, do_sample=False, eos_token_id=EOS, pad_token_id=EOS, **kwargs,
    )
    return [row + [EOS] * (max_tokens - len(row)) for row in out.tolist()]


def test_greedy_matches_uncached_argmax(captioner: ClipCap, tokenizer, features: torch.Tensor) -> None:
    expected = _uncached_greedy(captioner, features, max_tokens=12)
    lengths = [len(s) for s in expected]
    assert min(lengths) < 12 and max(lengths) == 12, "the model should stop at EOS on some rows, not all"
    got = generate_captions(captioner, tokenizer, features, max_tokens=12, batch_size=4)
    assert got == _texts(tokenizer, expected)


def test_max_tokens_cuts_captions(captioner: ClipCap, tokenizer, features: torch.Tensor) -> None:
    expected = _uncached_greedy(captioner, features, max_tokens=3)
    assert generate_captions(captioner, tokenizer, features, max_tokens=3) == _texts(tokenizer, expected)


def test_grid_features_and_train_mode(tokenizer, features: torch.Tensor) -> None:
    model = _tiny_captioner("gpt2")
    grid = features[:, None, :] + torch.randn(len(features), 3, FEATURE_DIM) * 0.1  # (N, T, F)
    expected = _texts(tokenizer, _uncached_greedy(model, grid.mean(dim=1), max_tokens=8))  # the MLP mapper pools
    model.train()  # dropout on: generation must switch it off, then restore training mode
    assert generate_captions(model, tokenizer, grid, max_tokens=8) == expected
    assert model.training
    assert generate_captions(model, tokenizer, features[:0]) == []


@torch.inference_mode()
@pytest.mark.filterwarnings("ignore:Passing `no_repeat_ngram_size`")
def test_greedy_matches_transformers_generate(captioner: ClipCap, features: torch.Tensor) -> None:
    prefix = captioner.prefix(features)
    for ngram in (0, 2):
        assert _greedy(_DecoderStepper(captioner.decoder, prefix), EOS, 12, ngram) == _hf_generate(
            captioner, prefix, 12, no_repeat_ngram_size=ngram
        )


@torch.inference_mode()
@pytest.mark.filterwarnings("ignore:Passing `no_repeat_ngram_size`")
@pytest.mark.parametrize(("length_penalty", "ngram"), [(1.0, 0), (0.0, 2)])
def test_beam_search_matches_transformers_generate(
    captioner: ClipCap, features: torch.Tensor, length_penalty: float, ngram: int
) -> None:
    """Same hypotheses as transformers' beam search run to completion (early_stopping="never")."""
    prefix = captioner.prefix(features)
    got = _beam_search(_DecoderStepper(captioner.decoder, prefix), EOS, 3, 12, length_penalty, ngram)
    assert got == _hf_generate(
        captioner, prefix, 12, num_beams=3, early_stopping="never", length_penalty=length_penalty,
        no_repeat_ngram_size=ngram,
    )


@torch.inference_mode()
def test_beam_search_finds_the_best_sequence_when_it_can_keep_all() -> None:
    """A 4-token vocabulary, 3 steps: 16 beams keep every prefix, so the result is the brute-force optimum."""
    eos, steps = 3, 3
    model = _tiny_captioner("gpt2", vocab=4, eos=eos, eos_bias=1.0)
    feats = torch.randn(6, FEATURE_DIM, generator=torch.Generator().manual_seed(2))
    candidates = [list(s) for n in range(1, steps + 1) for s in itertools.product(range(4), repeat=n)]
    candidates = [s for s in candidates if eos not in s[:-1] and (len(s) == steps or s[-1] == eos)]
    winners = set()
    for length_penalty in (0.0, 1.0, 2.0):
        got = _beam_search(_DecoderStepper(model.decoder, model.prefix(feats)), eos, 16, steps, length_penalty, 0)
        for feature, seq in zip(feats, got):
            scores = _scores(model, feature.expand(len(candidates), -1), candidates, length_penalty, eos)
            best = candidates[max(range(len(candidates)), key=scores.__getitem__)]
            assert seq == best + [eos] * (steps - len(best))
            winners.add(tuple(best))
    assert len({len(w) for w in winners}) > 1, "the penalties should pick sequences of different lengths"


@torch.inference_mode()
def test_one_beam_without_length_penalty_is_greedy(captioner: ClipCap, tokenizer, features: torch.Tensor) -> None:
    prefix = captioner.prefix(features)
    assert (_beam_search(_DecoderStepper(captioner.decoder, prefix), EOS, 1, 12, 0.0, 0)
            == _greedy(_DecoderStepper(captioner.decoder, prefix), EOS, 12, 0))
    assert generate_captions(captioner, tokenizer, features, beam_size=1) == generate_captions(captioner, tokenizer, features)


@torch.inference_mode()
def test_beam_search_scores_above_greedy(captioner: ClipCap, features: torch.Tensor) -> None:
    prefix = captioner.prefix(features)
    greedy = _greedy(_DecoderStepper(captioner.decoder, prefix), EOS, 12, 0)
    beam = _beam_search(_DecoderStepper(captioner.decoder, prefix), EOS, 3, 12, 1.0, 0)
    g = _scores(captioner, features, greedy, 1.0)
    b = _scores(captioner, features, beam, 1.0)
    # beam search may lose to greedy on a row (it can prune the greedy path), but not overall
    assert sum(b) > sum(g)
    assert sum(x >= y - 1e-4 for x, y in zip(b, g)) >= len(g) - 1


@torch.inference_mode()
def test_no_repeat_ngram(features: torch.Tensor) -> None:
    def repeats(seq: list[int]) -> bool:
        seq = seq[: seq.index(EOS)] if EOS in seq else seq
        bigrams = list(zip(seq, seq[1:]))
        return len(bigrams) != len(set(bigrams))

    model = _tiny_captioner("gpt2", eos_bias=0.0)  # no early EOS: long captions that repeat themselves
    prefix = model.prefix(features)
    assert any(repeats(s) for s in _greedy(_DecoderStepper(model.decoder, prefix), EOS, 20, 0))
    assert not any(repeats(s) for s in _greedy(_DecoderStepper(model.decoder, prefix), EOS, 20, 2))
    assert not any(repeats(s) for s in _beam_search(_DecoderStepper(model.decoder, prefix), EOS, 3, 20, 1.0, 2))


class _PastKeyValuesDecoder(torch.nn.Module):
    """A decoder as transformers before 5.24 names its KV cache: `past_key_values`, in and out."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, input_ids=None, inputs_embeds=None, past_key_values=None, use_cache=None, logits_to_keep=0):
        out = self.inner(input_ids=input_ids, inputs_embeds=inputs_embeds, cache=past_key_values,
                         use_cache=use_cache, logits_to_keep=logits_to_keep)
        return type("Output", (), {"logits": out.logits, "past_key_values": out.cache})()


@pytest.mark.parametrize("beam", [1, 3])
def test_older_transformers_cache_keyword_gives_the_same_captions(tokenizer, features: torch.Tensor, beam: int) -> None:
    model = _tiny_captioner("gpt2")
    expected = generate_captions(model, tokenizer, features, beam_size=beam, max_tokens=8)
    old_style = ClipCap(_PastKeyValuesDecoder(model.decoder), model.mapper).eval()
    assert generate_captions(old_style, tokenizer, features, beam_size=beam, max_tokens=8) == expected


@torch.inference_mode()
def _uncached_ensemble_greedy(models: list[ClipCap], features: torch.Tensor, max_tokens: int) -> list[list[int]]:
    """One image at a time, every model re-run on the whole sequence each step, argmax of their mean probabilities."""
    out = []
    for row in features:
        embeds = [m.prefix(row[None]) for m in models]  # per model (1, k, D)
        ids: list[int] = []
        for _ in range(max_tokens):
            probs = sum(m.decoder(inputs_embeds=e).logits[0, -1].softmax(-1) for m, e in zip(models, embeds))
            token = int(probs.argmax())
            ids.append(token)
            if token == EOS:
                break
            embeds = [torch.cat([e, m.embed_tokens(torch.tensor([[token]]))], dim=1) for m, e in zip(models, embeds)]
        out.append(ids)
    return out


def test_an_ensemble_decodes_with_its_members_mean_probabilities(tokenizer, features: torch.Tensor) -> None:
    gpt2, llama = _tiny_captioner("gpt2"), _tiny_captioner("llama", eos_bias=7.0)
    expected = _texts(tokenizer, _uncached_ensemble_greedy([gpt2, llama], features, max_tokens=10))
    assert expected != generate_captions(gpt2, tokenizer, features, max_tokens=10), "the members should disagree"
    assert expected != generate_captions(llama, tokenizer, features, max_tokens=10), "the members should disagree"
    assert generate_captions([gpt2, llama], tokenizer, features, max_tokens=10, batch_size=4) == expected
    # beam search reorders every member's cache: two copies of one model decode exactly as that model
    for beam in (3, 5):
        single = generate_captions(gpt2, tokenizer, features, beam_size=beam, max_tokens=10, no_repeat_ngram_size=2)
        assert generate_captions([gpt2, gpt2], tokenizer, features, beam_size=beam, max_tokens=10,
                                 no_repeat_ngram_size=2) == single
