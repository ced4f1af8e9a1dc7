"""Training step time with 0, 1 and 2 trained EfficientNet-Lite blocks, and the trunk cache's size, in one process.

    python benchmarks/trained_blocks.py [--encoders efficientnet-lite0,efficientnet-lite2] [--blocks 0,1,2]
                                        [--steps 20] [--rounds 3] [--threads 1]

Each configuration is `experiments/flickr8k.json`'s model (MLP mapper, 5 visual tokens, `gpt2-mini` with its
vocabulary cut to 7,552 token ids, as the training captions cut it) with `clip_config.train_last_blocks` N, the
encoder at its native size. A step is one cross-entropy training step on 64 captions of 21 tokens: the trained
blocks (from the cached trunk output, random values of its real shape) and the mapper and decoder, backward,
AdamW. The configurations take turns, in a rotated order each round, so the machine's load falls on all alike;
the median over rounds of `--steps` steps is printed as ms per step and minutes per Flickr8k epoch (469 steps:
30,000 captions in batches of 64). Beside it: what the feature cache stores per image (float16 pooled features;
the trunk output as float32) and for Flickr8k's 8,091 images.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_STEPS_PER_EPOCH = 469  # Flickr8k train: 6,000 images x 5 captions / 64
_IMAGES = 8091
_VOCABULARY = 7552  # token ids the Flickr8k training captions keep (`gpt2_config.vocabulary: train`)


def _setup(name: str, blocks: int, steps: int):
    """A training step function for one configuration, and the bytes one image's cache entry holds."""
    import torch

    from capexp.backbones import resolve_encoder
    from capexp.backbones.presets import EFFICIENTNETS
    from capexp.model.captioner import build_captioner
    from capexp.spec.loading import load_spec
    from capexp.training.optimizer import ClippedAdamW

    size = EFFICIENTNETS[name].native_size
    spec = load_spec(REPO / "experiments" / "flickr8k.json",
                     [f"clip_config.model={name}", f"clip_config.image_size=[{size}, {size}]",
                      f"clip_config.train_last_blocks={blocks}"])
    card = resolve_encoder(name, (size, size), "pooled", blocks)
    with torch.no_grad():
        one = card.load()(torch.zeros(1, 3, size, size))[0]  # (1280,) or the trunk's (C, h, w)
    model, _ = build_captioner(spec, [*range(_VOCABULARY - 1), 50256], card=card)  # 50256: end of text
    cfg = spec.training_config
    optimizer = ClippedAdamW(model, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                             grad_clip=cfg.grad_clip, encoder_learning_rate=cfg.encoder_lr)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(64, *one.shape, generator=gen).abs()
    ids = torch.randint(0, _VOCABULARY, (64, 21), generator=gen)
    mask = torch.ones_like(ids)
    model.train()

    def run() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.step(model(features, ids, mask))
        return (time.perf_counter() - start) / steps

    stored = one.numel() * (4 if blocks else 2)
    return run, stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="efficientnet-lite0,efficientnet-lite2")
    parser.add_argument("--blocks", default="0,1,2")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    configs = [(e, int(b)) for e in args.encoders.split(",") for b in args.blocks.split(",")]
    made = {c: _setup(*c, args.steps) for c in configs}
    for c in configs:  # warm-up: the first steps allocate
        made[c][0]()
    times: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in configs[r % len(configs):] + configs[: r % len(configs)]:
            times[c].append(made[c][0]())
    print(f"{'encoder':<20} {'blocks':>6} {'ms/step':>8} {'min/epoch':>9} {'vs 0':>6} {'cache/img':>10} {'Flickr8k':>9}")
    for name, blocks in configs:
        step = statistics.median(times[(name, blocks)])
        base = statistics.median(times[(name, 0)]) if (name, 0) in times else float("nan")
        stored = made[(name, blocks)][1]
        print(f"{name:<20} {blocks:>6} {step * 1e3:>8.1f} {step * _STEPS_PER_EPOCH / 60:>9.2f} {step / base:>5.2f}x "
              f"{stored / 1e3:>7.1f} kB {stored * _IMAGES / 1e6:>6.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
