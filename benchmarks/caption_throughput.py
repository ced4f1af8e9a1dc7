"""Captioning throughput in images per second: capexp's decoding against transformers' `generate`.

    python benchmarks/caption_throughput.py [--source RUN|FOLDER|models:/NAME@alias] [--images DIR]
                                            [--n 32] [--batch-size 32] [--device cpu]

Three stages, each at batch 1 and batched:
- decode: captions from precomputed features, greedy and beam 5, with capexp.model.decoding and with
  transformers' `generate(inputs_embeds=...)` on the same model (same prefix, same limits);
  the last column is how many captions the two agree on;
- encode: the image encoder alone (read, preprocess, forward), no cache;
- caption_folder: `capexp caption` end to end (list, encode through the feature cache, decode,
  write the CSV), with a cold and with a warm feature cache.

Without --source, a quickstart run is trained first (about a minute on 2 CPU cores) in a
temporary store. Images default to the first --n Flickr8k photos in $CAPEXP_DATA or ../shared/data.
Prints one table; exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _default_images() -> Path:
    root = Path(os.environ.get("CAPEXP_DATA", REPO.parent / "shared" / "data"))
    return root / "flickr8k" / "Flicker8k_Dataset"


def _train_quickstart(store: Path) -> str:
    from capexp.training.run import run_spec
    from capexp.spec.loading import load_spec

    spec = load_spec(REPO / "experiments" / "quickstart.json", [
        "training_config.num_epochs=2", "data_paths.num_train=128", "data_paths.num_val=16",
        "evaluation.max_images=8", "evaluation.coco_metrics=false", 'id="bench-quickstart"',
    ])
    return run_spec(spec, tracking_uri=f"sqlite:///{store / 'mlflow.db'}").run_id  # the store find_checkpoint reads


def _timed(fn: Callable[[], list[str]]) -> tuple[float, list[str]]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _hf_captions(captioner, features, beam: int, batch_size: int) -> list[str]:
    """The same captions through transformers' generate: prefix embeddings in, new tokens out."""
    import torch

    model, tok = captioner.model, captioner.tokenizer
    ev, cfg = captioner.spec.evaluation, captioner.spec.gpt2_config
    eos = tok.eos_token_id
    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            prefix = model.prefix(features[start : start + batch_size].to(captioner.device))  # (B, k, D)
            mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)  # (B, k)
            ids = model.decoder.generate(
                inputs_embeds=prefix, attention_mask=mask, max_new_tokens=ev.max_caption_tokens or cfg.text_tokens_max_length,
                num_beams=beam, do_sample=False, length_penalty=ev.length_penalty, early_stopping="never" if beam > 1 else False,
                no_repeat_ngram_size=ev.no_repeat_ngram_size, eos_token_id=eos, pad_token_id=tok.pad_token_id,
            ).tolist()
            cut = [seq[: seq.index(eos)] if eos in seq else seq for seq in ids]
            out += [text.strip() for text in tok.batch_decode(cut, skip_special_tokens=True)]
    return out


_Row = tuple[str, str, str, int, float, str]  # (stage, method, search, batch, images/s, same captions)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", help="run id or name, checkpoint folder or models:/NAME@alias (default: train quickstart)")
    parser.add_argument("--images", type=Path, default=_default_images(), help="folder of photos")
    parser.add_argument("--n", type=int, default=32, help="images to caption")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="capexp-bench-"))
    os.environ["CAPEXP_CACHE"] = str(work / "cache")  # a private feature cache: the cold run is really cold
    try:
        _bench(args, work)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path) -> None:
    """Load the model, link the images into a folder, measure the three stages and print the table."""
    import torch

    from capexp.model.checkpoint import find_checkpoint
    from capexp.serving.folder import list_images

    uri = None if args.source else f"sqlite:///{work / 'mlflow.db'}"
    source = args.source or _train_quickstart(work)
    checkpoint = find_checkpoint(source, tracking_uri=uri)
    captioner = checkpoint.load(args.device)
    folder = work / "images"
    folder.mkdir()
    files = list_images(args.images)[: args.n]
    for f in files:
        (folder / f.name).symlink_to(f.resolve())
    print(f"model {captioner.name}: {captioner.spec.clip_config.model} @ {captioner.spec.clip_config.image_size} "
          f"-> {captioner.spec.gpt2_config.model}; {len(files)} images from {args.images}; device "
          f"{captioner.device}; {torch.get_num_threads()} CPU threads", file=sys.stderr)

    features, rows = _encode_rows(captioner, files, args.batch_size)
    rows += _decode_rows(captioner, features, len(files), args.batch_size)
    rows += _caption_folder_rows(checkpoint, captioner, folder, len(files), work, args)
    print(f"\n{'stage':<15} {'method':<24} {'search':<7} {'batch':>5} {'images/s':>9}  same captions")
    for stage, method, search, bs, ips, same in rows:
        print(f"{stage:<15} {method:<24} {search:<7} {bs:>5} {ips:>9.1f}  {same}")


def _encode_rows(captioner, files: list[Path], batch_size: int):
    """The image encoder alone (read, preprocess, forward, no cache) at batch 1 and batched;
    returns the features of the batched run and the rows."""
    import torch
    from PIL import Image

    encoder = captioner.card.load(captioner.device)

    def encode(batch_size: int) -> torch.Tensor:
        rows = []
        for start in range(0, len(files), batch_size):
            pixels = captioner.card.preprocess([Image.open(f).convert("RGB") for f in files[start : start + batch_size]])
            with torch.inference_mode():
                rows.append(encoder(pixels.to(captioner.device)).float().cpu())
        return torch.cat(rows)

    encode(batch_size)  # warm up (allocator, kernels)
    rows: list[_Row] = []
    for bs in (1, batch_size):
        seconds, features = _timed(lambda: encode(bs))
        rows.append(("encode", "card.load + preprocess", "-", bs, len(files) / seconds, ""))
    return features, rows


def _decode_rows(captioner, features, n_images: int, batch_size: int) -> list[_Row]:
    """Greedy and beam 5 at batch 1 and batched: capexp's decoding, then transformers' generate."""
    rows: list[_Row] = []
    for beam in (1, 5):
        for bs in (1, batch_size):
            captioner.caption_features(features[:bs], beam=beam, batch_size=bs)  # warm up
            ours_s, ours = _timed(lambda: captioner.caption_features(features, beam=beam, batch_size=bs))
            hf_s, hf = _timed(lambda: _hf_captions(captioner, features, beam, bs))
            same = f"{sum(a == b for a, b in zip(ours, hf))}/{len(ours)}"
            kind = "greedy" if beam == 1 else "beam"
            rows.append(("decode", "capexp.model.decoding", kind, bs, n_images / ours_s, same))
            rows.append(("decode", "transformers generate", kind, bs, n_images / hf_s, same))
    return rows


def _caption_folder_rows(checkpoint, captioner, folder: Path, n_images: int, work: Path,
                         args: argparse.Namespace) -> list[_Row]:
    """`capexp caption` end to end at batch 1 and batched, each with a cold and then a warm feature cache."""
    from capexp.serving.folder import caption_folder

    rows: list[_Row] = []
    for bs in (1, args.batch_size):
        for state in ("cold cache", "warm cache"):
            if state == "cold cache":
                shutil.rmtree(work / "cache" / "features", ignore_errors=True)
            seconds, _ = _timed(lambda: caption_folder(folder, [checkpoint], work / "out.csv", batch_size=bs,
                                                          device=args.device))
            beam = captioner.spec.evaluation.beam_size
            rows.append(("caption_folder", state, "greedy" if beam == 1 else f"beam {beam}", bs, n_images / seconds, ""))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
