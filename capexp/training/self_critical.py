"""Self-critical sequence training (Rennie et al. 2017): the phase after cross-entropy that trains on CIDEr-D.

Each step samples `samples` captions per image from the model, rewards each with its CIDEr-D
against the image's training references (document frequencies from all training references),
and follows the policy gradient of (reward - baseline) * log p(caption). The baseline is the
mean reward of the image's other samples, or its greedy caption's reward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from capexp.evaluation.cider import CiderD, ptb_words
from capexp.model.decoding import greedy_tokens, sample_tokens, texts
from capexp.model.captioner import ClipCap
from capexp.model.mappers import crop_pool
from capexp.stopping import raise_if_stopped
from capexp.training.optimizer import ClippedAdamW

if TYPE_CHECKING:
    from capexp.spec.schema import ScstConfig

__all__ = ["SelfCritical"]


def _caption_mask(tokens: torch.Tensor, eos: int) -> torch.Tensor:
    """1 on each caption's tokens up to and including its first EOS (all of them when it has none)."""
    is_eos = (tokens == eos).long()
    before = is_eos.cumsum(dim=1) - is_eos  # EOS seen strictly before this position
    return (before == 0).long()


class SelfCritical:
    """The self-critical phase for one model: `epoch` trains one pass over the training images."""

    def __init__(self, model: ClipCap, tokenizer, features: torch.Tensor, references: list[list[str]], cfg: ScstConfig,
                 *, max_tokens: int, weight_decay: float, grad_clip: float | None, seed: int, device: torch.device,
                 encoder_lr_ratio: float, feature_crop: float | None = None) -> None:
        self.model, self.tokenizer, self.features, self.cfg, self.device = model, tokenizer, features, cfg, device
        self.max_tokens, self.feature_crop = max_tokens, feature_crop
        self.eos = tokenizer.eos_token_id
        self.cider = CiderD([[ptb_words(r) for r in refs] for refs in references])
        # trained encoder blocks keep the cross-entropy phase's ratio of their learning rate to the rest's
        self.optimizer = ClippedAdamW(model, learning_rate=cfg.learning_rate, weight_decay=weight_decay, grad_clip=grad_clip,
                                      encoder_learning_rate=cfg.learning_rate * encoder_lr_ratio)
        self.gen = torch.Generator().manual_seed(seed)

    def rewards(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """CIDEr-D of each caption in `tokens` (R, T) against the training references of `images` (R,)."""
        words = [ptb_words(text) for text in texts(self.tokenizer, tokens.tolist())]
        return torch.tensor(self.cider.scores(words, images.tolist()), dtype=torch.float32)

    def step(self, images: torch.Tensor) -> tuple[float, float]:
        """One policy-gradient step on the training images `images` (B,); their mean reward and baseline."""
        n, model = self.cfg.samples, self.model
        features = self.features[images]
        if self.feature_crop is not None:
            features = crop_pool(features, self.feature_crop, self.gen)
        prefix = model.prefix(features.to(self.device))  # (B, k, D), with gradients
        decoder_prefix = prefix.detach().to(model.decoder.get_input_embeddings().weight.dtype)
        repeated = images.repeat_interleave(n)  # (B*n,)
        tokens = sample_tokens(model.decoder, decoder_prefix.repeat_interleave(n, dim=0), self.eos, self.max_tokens, self.gen)
        reward = self.rewards(tokens, repeated).view(-1, n)  # (B, n)
        if self.cfg.baseline == "greedy":
            baseline = self.rewards(greedy_tokens(model.decoder, decoder_prefix, self.eos, self.max_tokens), images)
            baseline = baseline[:, None].expand(-1, n)  # (B, n)
        else:
            baseline = (reward.sum(dim=1, keepdim=True) - reward) / (n - 1)  # (B, n): the other samples' mean
        advantage = (reward - baseline).view(-1).to(self.device)  # (B*n,)
        mask = _caption_mask(tokens, self.eos)  # (B*n, T)
        logp = model.token_logprobs(prefix.repeat_interleave(n, dim=0), tokens, mask)  # (B*n, T)
        self.optimizer.step(-(advantage[:, None] * logp).sum() / mask.sum())
        return float(reward.mean()), float(baseline.mean())

    def epoch(self, label: str) -> dict[str, float]:
        """One pass over the training images in a seeded random order: mean reward and baseline."""
        self.model.eval()  # no dropout: the sampled captions and their gradients come from one distribution
        order = torch.randperm(len(self.features), generator=self.gen)
        totals, count = [0.0, 0.0], 0
        bar = tqdm(range(0, len(order), self.cfg.batch_size), desc=label, leave=False)
        for start in bar:
            raise_if_stopped()
            images = order[start : start + self.cfg.batch_size]
            reward, baseline = self.step(images)
            totals[0] += reward * len(images)
            totals[1] += baseline * len(images)
            count += len(images)
            bar.set_postfix(reward=f"{reward:.3f}")
        return {"scst_reward": totals[0] / count, "scst_baseline": totals[1] / count}
