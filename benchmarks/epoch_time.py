"""Epoch time: capexp (feature cache + `capexp.training.cross_entropy.train_cross_entropy`) against the seed's pipeline, same data and model.

    python benchmarks/epoch_time.py [--images 32] [--epochs 3] [--batch-size 64] [--threads 1]
                                    [--encoder clip-b32-random|efficientnet-lite0] [--vocabulary train|full]
                                    [--data DIR]

Both pipelines train the same ClipCap (deep copies of one set of initial weights: the encoder,
the seed's MLP mapper with k=5, the `gpt2-tiny` decoder, captions cut to 10 tokens) on the
same Flickr8k training images with all 5 captions each, batch 64, AdamW 1e-4, grad clip 1.0,
in the same shuffled batch order (the generator `train_cross_entropy` uses, seeded alike), on the CPU. The
decoder's vocabulary is cut to the training captions' tokens (`--vocabulary train`, as capexp's
specs do; `full` keeps GPT-2's 50,257 tokens) in both pipelines alike. The
default encoder is the seed's: a CLIP ViT-B/32-shaped vision tower (random weights: only its
cost matters here); `--encoder efficientnet-lite0` uses capexp's real-weights preset, about
ten times cheaper per image.

What one epoch's time holds:
- seed-style: a torch `Dataset` with one item per (image, caption) whose `__getitem__` reads
  the image, preprocesses it and runs the image encoder on it alone, then tokenizes the
  caption; a `DataLoader` (batch 64, no workers) feeds the training step (`train_cross_entropy`'s: loss on
  caption tokens, backward, grad clip, AdamW). Every epoch encodes every image 5 times.
  Epoch 1 also holds loading the encoder.
- capexp: the wall time between `train_cross_entropy`'s epoch callbacks. Epoch 1 also holds
  `capexp.backbones.feature_cache.encode_images` on an empty cache (a fresh $CAPEXP_CACHE: encoder load,
  batched encoding, writing the shards, reading them back) and `train_cross_entropy`'s setup (tokenizing).
  Every capexp epoch also holds `train_cross_entropy`'s per-epoch evaluation, kept as small as it goes: one
  validation image (validation loss, one greedy caption, its BERTScore; the BERTScore model is
  loaded before timing starts, COCO metrics are off). The seed-style epoch evaluates nothing,
  so the ratio is, if anything, in the seed's favour.

"Same results": both runs start from the same global seed, so dropout draws the same masks;
(1) the per-epoch mean training losses are shown side by side, and (2) after the timings, the
loss of the first batch under the initial weights with the seed's features (encoded one image
at a time) and with capexp's (batches of 64, stored as float16 in the cache); both must agree
to rtol 1e-4. Prints one table; exits 0 when both hold, 1 otherwise.

`--threads` defaults to 1: on a loaded machine two OpenMP threads per process made both
pipelines several times slower (0 keeps torch's default).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_TRAIN_IMAGES = 6000  # Flickr8k's official training split
_RTOL = 1e-4  # losses may differ by the features' float16 rounding in the cache, no more


def _default_data() -> Path:
    return Path(os.environ.get("CAPEXP_DATA", REPO.parent / "shared" / "data")) / "flickr8k"


def _random_clip_folder(folder: Path) -> str:
    """A CLIP ViT-B/32-shaped vision tower with random weights, saved where `resolve_encoder` reads it."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(CLIPVisionConfig()).save_pretrained(folder)
    return str(folder)


class _SeedStyleItems:
    """The seed's dataset: one item per (image, caption); the image is read and encoded on each access."""

    def __init__(self, images, captions: list[list[str]], card, encoder, tokenizer, max_tokens: int) -> None:
        self.images, self.card, self.encoder = images, card, encoder
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.pairs = [(i, caption) for i, refs in enumerate(captions) for caption in refs]  # fit's pair order

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        import torch

        from capexp.training.cross_entropy import tokenize

        image, caption = self.pairs[index]
        pixels = self.card.preprocess([self.images[image].load()])  # (1, 3, H, W)
        with torch.no_grad():
            feature = self.encoder(pixels)[0]  # (F,)
        ids, mask = tokenize(self.tokenizer, [caption], self.max_tokens)  # (1, L) each
        return feature, ids[0], mask[0]


def _seed_style(model, spec, split, card, tokenizer) -> tuple[list[float], list[float]]:
    """Train like the seed; returns (seconds, mean training loss) per epoch."""
    import torch
    from torch.utils.data import DataLoader

    cfg = spec.training_config
    started = time.perf_counter()
    encoder = card.load("cpu")
    max_tokens = spec.gpt2_config.text_tokens_max_length
    items = _SeedStyleItems(split.images, split.captions, card, encoder, tokenizer, max_tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(spec.seed)  # fit's batch order
    torch.manual_seed(spec.seed)  # the same dropout masks as in _capexp
    seconds, losses = [], []
    for _ in range(cfg.num_epochs):
        order = torch.randperm(len(items), generator=gen).tolist()
        model.train()
        total, steps = 0.0, 0
        # its own generator: the loader's base seed must not draw on the global one (dropout)
        loader = DataLoader(items, batch_size=cfg.batch_size, sampler=order, generator=torch.Generator())
        for features, ids, mask in loader:
            loss = model(features, ids, mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            total += loss.item()
            steps += 1
        losses.append(total / steps)
        now = time.perf_counter()
        seconds.append(now - started)
        started = now
    return seconds, losses


def _capexp(model, spec, train_split, val_split, card, tokenizer) -> tuple[list[float], list[float], int]:
    """Train through the feature cache and `train_cross_entropy`; returns seconds and mean training loss per epoch, images encoded."""
    import torch

    from capexp.backbones.feature_cache import encode_images
    from capexp.training.cross_entropy import CaptionData, train_cross_entropy

    marks = [time.perf_counter()]
    train_enc = encode_images(card, train_split.images, batch_size=64, progress=False)
    val_enc = encode_images(card, val_split.images, batch_size=64, progress=False)
    train = CaptionData([im.image_id for im in train_split.images], train_enc.features, train_split.captions)
    val = CaptionData([im.image_id for im in val_split.images], val_enc.features, val_split.captions)

    def mark(_result) -> None:
        marks.append(time.perf_counter())

    torch.manual_seed(spec.seed)  # the same dropout masks as in _seed_style
    history = train_cross_entropy(model, tokenizer, train, val, spec, torch.device("cpu"), mark)
    seconds = [b - a for a, b in zip(marks, marks[1:])]
    return seconds, [r.metrics["train_loss"] for r in history], train_enc.n_encoded + val_enc.n_encoded


def _first_batch_losses(model, spec, split, card, tokenizer, cached) -> tuple[float, float]:
    """Loss of `train_cross_entropy`'s first batch under `model`: features encoded one at a time, and read from the cache."""
    import torch

    items = _SeedStyleItems(split.images, split.captions, card, card.load("cpu"), tokenizer,
                            spec.gpt2_config.text_tokens_max_length)
    gen = torch.Generator().manual_seed(spec.seed)
    batch = torch.randperm(len(items), generator=gen)[: spec.training_config.batch_size]  # fit's first batch
    seed_features, ids, mask = (torch.stack(t) for t in zip(*(items[int(i)] for i in batch)))
    cached_features = cached[[items.pairs[int(i)][0] for i in batch]]  # (B, F)
    model.eval()  # no dropout: the two losses differ by the features alone
    with torch.no_grad():
        return float(model(seed_features, ids, mask)), float(model(cached_features, ids, mask))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="Flickr8k training images (5 captions each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--encoder", default="clip-b32-random", choices=["clip-b32-random", "efficientnet-lite0"],
                        help="a CLIP ViT-B/32-shaped tower with random weights (the seed's), or Lite0 (real weights)")
    parser.add_argument("--vocabulary", default="train", choices=["train", "full"],
                        help="cut the decoder to the training captions' tokens (as capexp's specs do) or keep all")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0: torch's default")
    parser.add_argument("--data", type=Path, default=_default_data(), help="the flickr8k folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.images <= _TRAIN_IMAGES or args.epochs < 2 or args.threads < 0:
        parser.error(f"--images must be 1..{_TRAIN_IMAGES}, --epochs at least 2 and --threads at least 0")

    tmp = Path(tempfile.mkdtemp(prefix="capexp-epoch-bench-"))
    os.environ["CAPEXP_CACHE"] = str(tmp / "cache")  # empty: capexp's first epoch really encodes
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return _bench(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _epoch_spec(args: argparse.Namespace):
    """The spec both pipelines train by: gpt2-tiny, k=5, 10 caption tokens, AdamW 1e-4, grad clip 1.0."""
    from capexp.spec.schema import Spec

    return Spec.model_validate({
        "id": "bench-epoch-time", "seed": args.seed,
        "gpt2_config": {"model": "gpt2-tiny", "visual_tokens_length": 5, "text_tokens_max_length": 10},
        "data_paths": {"source": "flickr8k", "root": str(args.data)},
        "training_config": {"subset_ratio": args.images / _TRAIN_IMAGES, "batch_size": args.batch_size,
                            "num_epochs": args.epochs, "learning_rate": 1e-4, "grad_clip": 1.0},
        "evaluation": {"coco_metrics": False, "max_images": 1, "batch_size": 64},
    })


def _bench(args: argparse.Namespace, tmp: Path) -> int:
    import torch

    from capexp.backbones import load_decoder, resolve_encoder
    from capexp.data import load_data
    from capexp.backbones.feature_cache import encode_images
    from capexp.evaluation.metrics import bertscore
    from capexp.model.captioner import build_captioner
    from capexp.model.vocabulary import training_vocabulary

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = _epoch_spec(args)
    splits = load_data(spec)
    train_split, val_split = splits.train, splits.val.subset(1 / len(splits.val), args.seed)
    encoder = _random_clip_folder(tmp / "clip-b32-random") if args.encoder == "clip-b32-random" else args.encoder
    card = resolve_encoder(encoder, (224, 224))
    torch.manual_seed(args.seed)
    decoder = load_decoder("gpt2-tiny")
    kept = training_vocabulary(decoder[1], train_split.captions) if args.vocabulary == "train" else None
    model, tokenizer = build_captioner(spec, kept, card=card, decoder=decoder)
    initial, seed_model = copy.deepcopy(model), copy.deepcopy(model)
    bertscore(["a dog runs"], [["a dog is running"]])  # load the scorer fit uses, outside the timings

    seed_s, seed_loss = _seed_style(seed_model, spec, train_split, card, tokenizer)
    cap_s, cap_loss, n_encoded = _capexp(model, spec, train_split, val_split, card, tokenizer)
    started = time.perf_counter()
    warm = encode_images(card, train_split.images, batch_size=64, progress=False)
    warm_s = time.perf_counter() - started
    first_seed, first_cap = _first_batch_losses(initial, spec, train_split, card, tokenizer, warm.features)

    n_captions = sum(len(refs) for refs in train_split.captions)
    same_first = abs(first_seed - first_cap) <= _RTOL * abs(first_seed)
    same_epochs = all(abs(a - b) <= _RTOL * abs(a) for a, b in zip(seed_loss, cap_loss))
    later = slice(1, None)
    seed_later, cap_later = sum(seed_s[later]) / len(seed_s[later]), sum(cap_s[later]) / len(cap_s[later])
    print(f"\nepoch time: {len(train_split)} Flickr8k images, {n_captions} captions, encoder {args.encoder}, "
          f"decoder gpt2-tiny ({len(tokenizer)} tokens), batch {args.batch_size}, CPU, {torch.get_num_threads()} torch threads")
    print(f"{'epoch':>14} | {'seed-style s':>12} | {'capexp s':>9} | {'speed-up':>8} | "
          f"{'seed loss':>9} | {'capexp loss':>11} | {'|diff|':>8}")
    print("-" * 90)
    for e, (a, b, la, lb) in enumerate(zip(seed_s, cap_s, seed_loss, cap_loss), start=1):
        print(f"{e:>14} | {a:>12.2f} | {b:>9.2f} | {a / b:>7.1f}x | {la:>9.4f} | {lb:>11.4f} | {abs(la - lb):>8.1e}")
    print(f"{'first epoch':>14} | {seed_s[0]:>12.2f} | {cap_s[0]:>9.2f} | {seed_s[0] / cap_s[0]:>7.1f}x |")
    print(f"{'later (mean)':>14} | {seed_later:>12.2f} | {cap_later:>9.2f} | {seed_later / cap_later:>7.1f}x |")
    print(f"{'first batch':>14} | {'':>12} | {'':>9} | {'':>8} | {first_seed:>9.4f} | {first_cap:>11.4f} | "
          f"{abs(first_seed - first_cap):>8.1e}")
    print("-" * 90)
    print(f"images encoded: seed-style {n_captions * args.epochs} ({n_captions} per epoch), capexp {n_encoded} "
          f"(once, with the validation image); a later run reads all {warm.n_cached} from the warm cache "
          f"in {warm_s:.2f} s")
    print(f"same results (rtol {_RTOL}): per-epoch losses {'yes' if same_epochs else 'NO'}, "
          f"first batch {'yes' if same_first else 'NO'}")
    return 0 if same_first and same_epochs else 1


if __name__ == "__main__":
    sys.exit(main())
