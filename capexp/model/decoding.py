"""Captions from image features: batched greedy, beam search and sampling over the decoder's KV cache.

One code path for training-time validation, `capexp evaluate` and inference. Both methods feed
the k visual tokens once as `inputs_embeds`, then one token per step with `past_key_values`.
Lengths count generated tokens, EOS included; a caption holds at most `max_tokens` tokens.
Several models decode as one ensemble: each step uses the mean of their next-token probabilities.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import Cache

from capexp.model.captioner import ClipCap

if TYPE_CHECKING:
    from capexp.spec.schema import Spec

__all__ = ["DecodeOptions", "decode", "generate_captions", "sample_tokens", "greedy_tokens", "texts"]


@dataclass(frozen=True)
class DecodeOptions:
    """How captions are decoded; `from_spec` reads them from a spec's `evaluation` section."""

    beam_size: int = 1  # 1: greedy
    max_tokens: int = 20
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    @classmethod
    def from_spec(cls, spec: Spec, *, beam: int | None = None) -> DecodeOptions:
        """The spec's decoding (`max_caption_tokens` None: `text_tokens_max_length`); `beam` overrides."""
        ev = spec.evaluation
        return cls(beam or ev.beam_size, ev.max_caption_tokens or spec.gpt2_config.text_tokens_max_length,
                   ev.length_penalty, ev.no_repeat_ngram_size)

    def describe(self) -> str:
        return f"beam={self.beam_size} length_penalty={self.length_penalty} no_repeat_ngram_size={self.no_repeat_ngram_size}"


def decode(model: ClipCap | list[ClipCap], tokenizer, features: torch.Tensor, options: DecodeOptions, *, batch_size: int = 64,
           device: str | torch.device = "cpu") -> list[str]:
    """`generate_captions` with its options as one `DecodeOptions`."""
    return generate_captions(
        model, tokenizer, features, beam_size=options.beam_size, max_tokens=options.max_tokens,
        length_penalty=options.length_penalty, no_repeat_ngram_size=options.no_repeat_ngram_size,
        batch_size=batch_size, device=device,
    )


@torch.inference_mode()
def generate_captions(
    model: ClipCap | list[ClipCap],
    tokenizer,
    features: torch.Tensor,
    *,
    beam_size: int = 1,
    max_tokens: int = 20,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> list[str]:
    """One caption per feature row, in order; greedy when `beam_size` is 1, beam search otherwise.

    `features` is (N, F) pooled or (N, T, F) grid, on any device; `model` must already be on
    `device`. A list of models decodes as their ensemble: they must share the tokenizer (and its
    vocabulary) and the features. Beam hypotheses are ranked by sum(log p) / length ** `length_penalty`
    (the transformers convention). `no_repeat_ngram_size` > 0 forbids any n-gram of that size
    twice in a caption. Decoding stops at the tokenizer's EOS, which is not part of the text.
    The models are put in eval mode for the call and restored afterwards; on CUDA they run
    under bf16 autocast.
    """
    if beam_size < 1 or max_tokens < 1 or no_repeat_ngram_size < 0 or batch_size < 1:
        raise ValueError(
            f"beam_size, max_tokens and batch_size must be >= 1 and no_repeat_ngram_size >= 0; got "
            f"{beam_size}, {max_tokens}, {batch_size}, {no_repeat_ngram_size}"
        )
    models = model if isinstance(model, list) else [model]
    eos = tokenizer.eos_token_id
    device = torch.device(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    tokens: list[list[int]] = []
    try:
        for start in range(0, len(features), batch_size):
            batch = features[start : start + batch_size].to(device)
            with autocast:
                steps = [_DecoderStepper(m.decoder, _decoder_prefix(m, batch)) for m in models]
                stepper = steps[0] if len(steps) == 1 else _EnsembleStepper(steps)
                if beam_size == 1:
                    tokens += _greedy(stepper, eos, max_tokens, no_repeat_ngram_size)
                else:
                    tokens += _beam_search(stepper, eos, beam_size, max_tokens, length_penalty, no_repeat_ngram_size)
    finally:
        for m, training in zip(models, was_training):
            m.train(training)
    return texts(tokenizer, tokens)


def _decoder_prefix(model: ClipCap, features: torch.Tensor) -> torch.Tensor:
    """The visual tokens of `features`, in the decoder's dtype."""
    return model.prefix(features).to(model.decoder.get_input_embeddings().weight.dtype)  # (B, k, D)


def texts(tokenizer, tokens: list[list[int]]) -> list[str]:
    """The caption text of each token sequence, cut at the tokenizer's first EOS."""
    if not tokens:
        return []  # some tokenizers decode an empty batch as [""]
    eos = tokenizer.eos_token_id
    cut = [seq[: seq.index(eos)] if eos in seq else seq for seq in tokens]
    return [text.strip() for text in tokenizer.batch_decode(cut, skip_special_tokens=True)]


def _cache_of(out) -> Cache:
    """The KV cache a forward returned: `.cache` from transformers 5.24, `.past_key_values` before."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _with_cache(decoder, cache: Cache) -> dict[str, Any]:
    """Keyword arguments passing `cache` back in, named as this transformers version names them."""
    name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


def _ban_repeated_ngrams(scores: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """Set to -inf, in place, every token that would complete an n-gram already in `history`.

    `scores` (R, V) are next-token scores for the R sequences in `history` (R, t).
    """
    t = history.shape[1]
    if n == 0 or t < n:
        return
    windows = history.unfold(1, n, 1)  # (R, t - n + 1, n): every n-gram so far
    prefix = history[:, t - n + 1 :]  # (R, n - 1): the n-gram being started
    match = (windows[:, :, :-1] == prefix[:, None, :]).all(dim=-1)  # (R, W)
    rows, cols = match.nonzero(as_tuple=True)
    scores[rows, windows[rows, cols, -1]] = -math.inf


class _DecoderStepper:
    """One decoder stepping one token at a time over its KV cache: next-token logits for the running rows."""

    def __init__(self, decoder, prefix: torch.Tensor) -> None:
        self.decoder, self.prefix = decoder, prefix  # prefix (R, k, D)
        self.cache: Cache | None = None
        self.with_cache: dict[str, Any] = {}

    @property
    def rows(self) -> int:
        """R, the rows (images) decoded."""
        return self.prefix.shape[0]

    def start(self, repeat: int = 1) -> torch.Tensor:
        """Logits (R * repeat, V) after the visual tokens, each row repeated `repeat` times in a row."""
        prefix = self.prefix.repeat_interleave(repeat, dim=0) if repeat > 1 else self.prefix
        out = self.decoder(inputs_embeds=prefix, use_cache=True, logits_to_keep=1)
        self.cache = _cache_of(out)
        self.with_cache = _with_cache(self.decoder, self.cache)  # the cache object is updated in place from here on
        return out.logits[:, -1]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits (R, V) after feeding one token (R,) to each running row."""
        return self.decoder(input_ids=tokens[:, None], **self.with_cache).logits[:, -1]

    def keep(self, rows: torch.Tensor) -> None:
        """Run on with only the rows `rows`."""
        self.cache.batch_select_indices(rows)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i runs on from the state of row `rows[i]` (beam search)."""
        self.cache.reorder_cache(rows)


class _EnsembleStepper:
    """Several `_DecoderStepper`s as one stepper: log of the mean of their next-token probabilities."""

    def __init__(self, members: list[_DecoderStepper]) -> None:
        self.members = members

    @property
    def rows(self) -> int:
        return self.members[0].rows

    def _mean(self, logits: list[torch.Tensor]) -> torch.Tensor:
        logp = torch.stack([x.float().log_softmax(dim=-1) for x in logits])  # (M, R, V)
        return logp.logsumexp(dim=0) - math.log(len(logits))

    def start(self, repeat: int = 1) -> torch.Tensor:
        return self._mean([m.start(repeat) for m in self.members])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._mean([m.step(tokens) for m in self.members])

    def keep(self, rows: torch.Tensor) -> None:
        for m in self.members:
            m.keep(rows)

    def reorder(self, rows: torch.Tensor) -> None:
        for m in self.members:
            m.reorder(rows)


def _left_to_right(steps: _DecoderStepper | _EnsembleStepper, eos: int, max_tokens: int,
                   choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One token per step for each of the R rows of `steps`, picked by `choose(logits (R', V), history (R', t))`:
    tokens (R, max_tokens), EOS-padded. Rows leave the batch and the cache once they emit EOS."""
    logits = steps.start()  # (R', V) for the R' rows still running
    tokens = torch.full((steps.rows, max_tokens), eos, dtype=torch.long, device=logits.device)
    rows = torch.arange(steps.rows, device=logits.device)  # (R',) batch index of each running row
    for t in range(max_tokens):
        step = choose(logits, tokens[rows, :t])  # (R',)
        tokens[rows, t] = step
        running = step != eos
        if t == max_tokens - 1 or not bool(running.any()):
            break
        if not bool(running.all()):
            keep = running.nonzero().squeeze(1)
            steps.keep(keep)
            rows, step = rows[keep], step[keep]
        logits = steps.step(step)
    return tokens


def _greedy(steps: _DecoderStepper | _EnsembleStepper, eos: int, max_tokens: int, ngram: int) -> list[list[int]]:
    """Argmax decoding of a batch (EOS-padded), never repeating an n-gram of size `ngram` (0: no limit)."""

    def argmax(logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        if ngram:
            logits = logits.float()
            _ban_repeated_ngrams(logits, history, ngram)
        return logits.argmax(dim=-1)

    return _left_to_right(steps, eos, max_tokens, argmax).tolist()


@torch.no_grad()
def sample_tokens(decoder, prefix: torch.Tensor, eos: int, max_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """One caption sampled from the decoder's distribution per row of `prefix` (R, k, D): tokens
    (R, max_tokens), EOS-padded. `generator` (a CPU generator) makes the samples reproducible."""

    def draw(logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)

    return _left_to_right(_DecoderStepper(decoder, prefix), eos, max_tokens, draw)


@torch.no_grad()
def greedy_tokens(decoder, prefix: torch.Tensor, eos: int, max_tokens: int) -> torch.Tensor:
    """The greedy caption of each row of `prefix` (R, k, D): tokens (R, max_tokens), EOS-padded."""
    return torch.tensor(_greedy(_DecoderStepper(decoder, prefix), eos, max_tokens, 0), dtype=torch.long, device=prefix.device)


def _beam_search(
    steps: _DecoderStepper | _EnsembleStepper, eos: int, beams: int, max_tokens: int, length_penalty: float, ngram: int
) -> list[list[int]]:
    """Batched beam search over the rows of `steps`; returns the best finished hypothesis of each row (EOS-padded).

    Each step keeps the 2K best continuations of the K running beams: those ending (EOS, or
    the last step) among the top K become finished hypotheses, the best K others run on. A
    row stops once no running beam can beat its K-th finished hypothesis.
    """
    B, K = steps.rows, beams
    logits = steps.start(repeat=K)  # (B*K, V)
    dev = logits.device
    running = torch.full((B, K), -math.inf, device=dev)  # sum of log-probs of each running beam
    running[:, 0] = 0.0  # all beams start identical: expand only the first
    history = torch.empty((B * K, 0), dtype=torch.long, device=dev)  # (B*K, t)
    done_scores = torch.full((B, K), -math.inf, device=dev)  # finished hypotheses, best first
    done_seqs = torch.full((B, K, max_tokens), eos, dtype=torch.long, device=dev)
    closed = torch.zeros(B, dtype=torch.bool, device=dev)  # rows whose result can no longer change
    top_k = torch.arange(2 * K, device=dev) < K  # (2K,) candidates allowed to finish
    row_offset = torch.arange(B, device=dev)[:, None] * K  # (B, 1)
    for t in range(max_tokens):
        logits = logits.float()  # (B*K, V)
        norm = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B*K, 1): log p = logit - norm
        if ngram:
            _ban_repeated_ngrams(logits, history, ngram)
        # the best 2K continuations overall are among the best 2K of each beam
        per_beam = min(2 * K, logits.shape[-1])
        best, best_token = logits.topk(per_beam, dim=-1)  # (B*K, per_beam)
        candidates = (running.view(-1, 1) + best - norm).view(B, K * per_beam)
        scores, flat = candidates.topk(2 * K, dim=1)  # (B, 2K)
        parent, token = flat // per_beam, best_token.view(B, K * per_beam).gather(1, flat)
        seqs = torch.cat([history.view(B, K, t).gather(1, parent[..., None].expand(-1, -1, t)), token[..., None]], dim=2)
        ends = (token == eos) | (t == max_tokens - 1)  # (B, 2K)
        finishing = torch.where(ends & top_k & ~closed[:, None], scores / (t + 1) ** length_penalty, -math.inf)
        done_scores, pick = torch.cat([done_scores, finishing], dim=1).topk(K, dim=1)  # (B, K)
        padded = torch.nn.functional.pad(seqs, (0, max_tokens - t - 1), value=eos)  # (B, 2K, max_tokens)
        done_seqs = torch.cat([done_seqs, padded], dim=1).gather(1, pick[..., None].expand(-1, -1, max_tokens))
        if t == max_tokens - 1:
            break
        running, keep = torch.where(ends, -math.inf, scores).topk(K, dim=1)  # (B, K)
        history = seqs.gather(1, keep[..., None].expand(-1, -1, t + 1)).view(B * K, t + 1)
        # the best a running beam can still reach: log-probs only fall, lengths are t+2..max_tokens
        best_length = max_tokens if length_penalty > 0 else t + 2
        closed |= running[:, 0] / best_length**length_penalty <= done_scores[:, -1]
        if bool(closed.all()):
            break
        steps.reorder((row_offset + parent.gather(1, keep)).view(-1))
        logits = steps.step(history[:, -1])
    return done_seqs[:, 0].tolist()
