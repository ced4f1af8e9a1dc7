"""Encode time per image of the EfficientNet-Lite presets, each at its native size, in one process.

    python benchmarks/encode_time.py [--images 100] [--batch-size 64] [--threads 1] [--rounds 3] [--data DIR]

The first `--images` photos of Flickr8k's official training list ($CAPEXP_DATA or ../shared/data) are
encoded by every Lite preset at its native size (224, 240, 260 px), pooled features, on the CPU:
- `network`: the encoder's forward pass alone on preprocessed pixels, batches of `--batch-size`; the
  median over `--rounds` rounds, the encoders taking turns in a rotated order each round, so a change
  in the machine's load falls on all of them alike;
- `preprocess`: reading, resizing and normalising the photos (`EncoderCard.preprocess`), median alike;
- `encode_images`: what a run pays on a cold feature cache (a fresh $CAPEXP_CACHE): loading the
  encoder, reading and preprocessing in a background thread, the forward passes, writing the shards.
Prints one table, seconds per image and the ratio to Lite0.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _default_data() -> Path:
    return Path(os.environ.get("CAPEXP_DATA", REPO.parent / "shared" / "data")) / "flickr8k"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cold_cache(cards: dict, files: list[Path], batch_size: int) -> dict[str, float]:
    """Seconds per image of `encode_images` for each card, from an empty feature cache."""
    from capexp.backbones.feature_cache import encode_images
    from capexp.data.types import ImageRef

    refs = [ImageRef.from_file(f) for f in files]
    cold = {}
    with tempfile.TemporaryDirectory(prefix="capexp-encode-time-") as cache:
        os.environ["CAPEXP_CACHE"] = cache  # cold: nothing cached yet
        for name, card in cards.items():
            cold[name] = _timed(lambda: encode_images(card, refs, batch_size=batch_size, progress=False)) / len(files)
    return cold


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64, help="the feature cache's default")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=_default_data(), help="the flickr8k folder")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    from capexp.backbones import resolve_encoder
    from capexp.backbones.presets import EFFICIENTNETS

    if args.threads:
        torch.set_num_threads(args.threads)
    names = (args.data / "Flickr8k_text" / "Flickr_8k.trainImages.txt").read_text().split()[: args.images]
    files = [args.data / "Flicker8k_Dataset" / n for n in names]
    cards = {name: resolve_encoder(name, (p.native_size, p.native_size)) for name, p in EFFICIENTNETS.items()}
    encoders = {name: card.load() for name, card in cards.items()}
    pixels = {name: [card.preprocess([Image.open(f) for f in files[i : i + args.batch_size]])
                     for i in range(0, len(files), args.batch_size)] for name, card in cards.items()}

    def forward(name: str) -> None:
        with torch.inference_mode():
            for batch in pixels[name]:
                encoders[name](batch)

    def preprocess(name: str) -> None:
        for i in range(0, len(files), args.batch_size):
            cards[name].preprocess([Image.open(f) for f in files[i : i + args.batch_size]])

    for name in cards:
        forward(name)  # warm up: allocator, kernels
    network: dict[str, list[float]] = {name: [] for name in cards}
    prep: dict[str, list[float]] = {name: [] for name in cards}
    order = list(cards)
    for r in range(args.rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:
            network[name].append(_timed(lambda: forward(name)) / len(files))
            prep[name].append(_timed(lambda: preprocess(name)) / len(files))

    cold = _cold_cache(cards, files, args.batch_size)
    print(f"{len(files)} Flickr8k train images, batch {args.batch_size}, {torch.get_num_threads()} torch thread(s), "
          f"median of {args.rounds} rounds; seconds per image")
    base = statistics.median(network["efficientnet-lite0"])
    print(f"{'encoder':<20}{'size':>6}{'network':>10}{'x Lite0':>9}{'preprocess':>12}{'encode_images':>15}")
    for name, card in cards.items():
        net = statistics.median(network[name])
        print(f"{name:<20}{card.image_size[0]:>6}{net:>10.4f}{net / base:>9.2f}"
              f"{statistics.median(prep[name]):>12.4f}{cold[name]:>15.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
