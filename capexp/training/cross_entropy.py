"""The training loop: cached features and tokenized captions in, a trained ClipCap and per-epoch metrics out.

`train_cross_entropy` trains (its progress line shows the whole run's time left, `RunClock`); after each
epoch `evaluate_epoch` (also what `capexp evaluate` runs) captions the validation images and scores them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from capexp.errors import TrainingDiverged, warn
from capexp.model.captioner import ClipCap
from capexp.model.decoding import DecodeOptions, decode
from capexp.model.mappers import crop_pool
from capexp.stopping import raise_if_stopped
from capexp.training.optimizer import ClippedAdamW

if TYPE_CHECKING:
    from capexp.spec.schema import EvaluationConfig, Spec

__all__ = ["CaptionData", "EpochResult", "RunClock", "pick_device", "tokenize", "evaluate_epoch", "train_cross_entropy"]

log = logging.getLogger("capexp")


@dataclass
class CaptionData:
    """One split ready for training: one feature row per image and all its references."""

    image_ids: list[str]
    features: torch.Tensor  # (N, F) or (N, T, F)
    references: list[list[str]]


@dataclass
class EpochResult:
    epoch: int  # 1-based
    metrics: dict[str, float]
    captions: list[str]  # greedy/beam captions of the first len(captions) validation images
    seconds: float = 0.0


def pick_device(enable_gpu: bool) -> torch.device:
    """CUDA when asked for and present; otherwise CPU (with a warning if CUDA was asked for)."""
    if enable_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    if enable_gpu:
        warn("training_config.enable_GPU is true but no CUDA device is available; training on the CPU.")
    return torch.device("cpu")


def tokenize(tokenizer, captions: list[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption tokens cut to `max_tokens`, then EOS, right-padded: ids and mask, each (M, max_tokens + 1)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = torch.full((len(captions), max_tokens + 1), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    encoded = tokenizer(captions, add_special_tokens=False)["input_ids"]
    for i, tokens in enumerate(encoded):
        tokens = tokens[:max_tokens] + [eos]
        ids[i, : len(tokens)] = torch.tensor(tokens)
        mask[i, : len(tokens)] = 1
    return ids, mask


def _pairs(data: CaptionData, tokenizer, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (image, reference) pair: image index (M,), ids and mask (M, L)."""
    image_index = torch.tensor([i for i, refs in enumerate(data.references) for _ in refs], dtype=torch.long)
    ids, mask = tokenize(tokenizer, [r for refs in data.references for r in refs], max_tokens)
    return image_index, ids, mask


def _one_per_image(image_index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Rows picking one random reference per image."""
    n = int(image_index.max()) + 1
    keys = torch.rand(len(image_index), generator=gen) + image_index.double()  # sorts by image, shuffles within
    order = torch.argsort(keys)
    first = torch.searchsorted(image_index[order].contiguous(), torch.arange(n))
    return order[first]


def _schedule(optimizer, warmup: int, total: int, kind: str) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def _val_loss(model: ClipCap, features, image_index, ids, mask, batch_size: int, device: torch.device) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(ids), batch_size):
        sl = slice(start, start + batch_size)
        with _autocast(device):
            loss = model(features[image_index[sl]].to(device), ids[sl].to(device), mask[sl].to(device))
        tokens = int(mask[sl].sum())
        total += float(loss) * tokens
        count += tokens
    return total / max(count, 1)


def evaluate_epoch(
    model: ClipCap | list[ClipCap],
    tokenizer,
    features: torch.Tensor,
    references: list[list[str]],
    options: DecodeOptions,
    ev: EvaluationConfig,
    device: torch.device,
) -> tuple[list[str], dict[str, float]]:
    """Caption `features` (one row per image) as `options` say (a list of models: as one ensemble) and score them
    against all `references`."""
    from capexp.evaluation.metrics import caption_metrics

    captions = decode(model, tokenizer, features, options, batch_size=ev.batch_size, device=device)
    return captions, caption_metrics(captions, references, ev, device=str(device))


class RunClock:
    """The time left in a run's cross-entropy training: the mean step time so far times the steps left
    over all its epochs, shown on the progress line so that the hours ahead show in the first minute."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps, self.steps, self.seconds = total_steps, 0, 0.0

    def tick(self, seconds: float) -> None:
        """One step done, which took `seconds`."""
        self.steps += 1
        self.seconds += seconds

    def left(self) -> float:
        """Seconds left (nan before the first step)."""
        return self.seconds / self.steps * (self.total_steps - self.steps) if self.steps else math.nan

    def describe(self) -> str:
        """`~3h12m left`, `~4m05s left` (`?` before the first step)."""
        left = self.left()
        if math.isnan(left):
            return "? left"
        minutes, seconds = divmod(round(left), 60)
        hours, minutes = divmod(minutes, 60)
        return f"~{hours}h{minutes:02d}m left" if hours else f"~{minutes}m{seconds:02d}s left"


class _Batches:
    """The training pairs, the optimizer and its schedule: one `epoch` call trains one epoch."""

    def __init__(self, model: ClipCap, tokenizer, train: CaptionData, spec: Spec, device: torch.device) -> None:
        cfg = self.cfg = spec.training_config
        self.model, self.train, self.device = model, train, device
        self.gen = torch.Generator().manual_seed(spec.seed)
        self.index, self.ids, self.mask = _pairs(train, tokenizer, spec.gpt2_config.text_tokens_max_length)
        n_rows = len(train.references) if cfg.one_caption_per_image else len(self.ids)
        self.steps = math.ceil(n_rows / cfg.batch_size)
        self.optimizer = ClippedAdamW(model, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                      grad_clip=cfg.grad_clip, encoder_learning_rate=cfg.encoder_lr)
        self.scheduler = _schedule(self.optimizer.optimizer, cfg.warmup_steps, self.steps * cfg.num_epochs, cfg.lr_schedule)
        self.clock = RunClock(self.steps * cfg.num_epochs)

    def epoch(self, epoch: int) -> float:
        """Train one epoch; the mean training loss."""
        cfg, model = self.cfg, self.model
        model.train()
        rows = _one_per_image(self.index, self.gen) if cfg.one_caption_per_image else torch.arange(len(self.ids))
        rows = rows[torch.randperm(len(rows), generator=self.gen)]
        total = 0.0
        bar = tqdm(range(0, len(rows), cfg.batch_size), desc=f"epoch {epoch}/{cfg.num_epochs}", leave=False)
        for start in bar:
            raise_if_stopped()
            started = time.perf_counter()
            batch = rows[start : start + cfg.batch_size]
            features = self.train.features[self.index[batch]]
            if cfg.feature_crop is not None:
                features = crop_pool(features, cfg.feature_crop, self.gen)
            with _autocast(self.device):
                loss = model(features.to(self.device), self.ids[batch].to(self.device),
                             self.mask[batch].to(self.device), cfg.label_smoothing)
            self.optimizer.step(loss)
            self.scheduler.step()
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"the training loss became {value} at epoch {epoch}, step {start // cfg.batch_size + 1} of "
                    f"{self.steps}, so the run stops. Lower `training_config.learning_rate` (now "
                    f"{cfg.learning_rate:g}), set `training_config.grad_clip` (e.g. 1.0) or raise "
                    f"`training_config.warmup_steps`. Epochs finished before keep their metrics and checkpoint."
                )
            total += value
            self.clock.tick(time.perf_counter() - started)
            bar.set_postfix(loss=f"{total / (start // cfg.batch_size + 1):.3f}", run=self.clock.describe())
        return total / self.steps


def train_cross_entropy(
    model: ClipCap,
    tokenizer,
    train: CaptionData,
    val: CaptionData,
    spec: Spec,
    device: torch.device,
    on_epoch: Callable[[EpochResult], bool | None],
) -> list[EpochResult]:
    """Train `num_epochs` of cross-entropy, then `scst.epochs` self-critical ones when the spec has them;
    after each epoch evaluate and call `on_epoch` (True stops training)."""
    cfg, ev = spec.training_config, spec.evaluation
    model.to(device)
    batches = _Batches(model, tokenizer, train, spec, device)
    va_index, va_ids, va_mask = _pairs(val, tokenizer, spec.gpt2_config.text_tokens_max_length)
    n_caption = len(val.image_ids) if ev.max_images is None else min(ev.max_images, len(val.image_ids))
    options = DecodeOptions.from_spec(spec)
    log.info(
        "training %d trainable / %d parameters on %s: %d images, %d captions, %d steps per epoch",
        sum(p.numel() for p in batches.optimizer.params), sum(p.numel() for p in model.parameters()), device,
        len(train.image_ids), len(batches.ids), batches.steps,
    )

    history: list[EpochResult] = []

    def finish_epoch(epoch: int, metrics: dict[str, float], started: float) -> bool:
        """Validate, record and report one epoch; True when the caller asks to stop."""
        metrics["val_loss"] = _val_loss(model, val.features, va_index, va_ids, va_mask, ev.batch_size, device)
        model.eval()
        captions, scores = evaluate_epoch(model, tokenizer, val.features[:n_caption], val.references[:n_caption],
                                          options, ev, device)
        metrics |= scores
        result = EpochResult(epoch, metrics, captions, seconds=time.perf_counter() - started)
        history.append(result)
        log.info("epoch %d: %s (%.1fs)", epoch, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), result.seconds)
        if on_epoch(result):
            log.info("stopping after epoch %d (asked by the caller)", epoch)
            return True
        return False

    total = cfg.total_epochs
    for epoch in range(1, cfg.num_epochs + 1):
        started = time.perf_counter()
        if finish_epoch(epoch, {"train_loss": batches.epoch(epoch)}, started):
            return history
    if cfg.scst:
        from capexp.training.self_critical import SelfCritical

        scst = SelfCritical(model, tokenizer, train.features, train.references, cfg.scst, max_tokens=options.max_tokens,
                            weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, seed=spec.seed, device=device,
                            feature_crop=cfg.feature_crop, encoder_lr_ratio=cfg.encoder_lr / cfg.learning_rate)
        for epoch in range(cfg.num_epochs + 1, total + 1):
            started = time.perf_counter()
            if finish_epoch(epoch, scst.epoch(f"self-critical epoch {epoch}/{total}"), started):
                break
    return history
