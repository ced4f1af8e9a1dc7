"""Full-size GPU benchmark through capexp's own code: CLIP ViT-B/32 + GPT-2 small shapes, random weights.

    bash benchmarks/gpu_wheelhouse.sh                    # here, once: .whl/ (pydantic, bert-score, ...)
    python benchmarks/gpu_full_size.py                   # on the GPU machine (README: the one command)
    python benchmarks/gpu_full_size.py --tiny            # small shapes on the CPU: checks that it runs

Nothing is downloaded: the models are built from `CLIPVisionConfig()` (ViT-B/32, 512-d
projection) and `GPT2Config()` (GPT-2 small, 50,257 tokens) with random weights (speed does not
depend on them) and saved as local model folders, which capexp then reads as a user's
`clip_config.model` / `gpt2_config.model`. The decoder's tokenizer is a word-level one over the
token ids written as numbers ("17 4032 ..."): GPT-2's vocabulary size, no BPE files needed. A
`capexp.spec.schema.Spec` (pydantic) holds the run: mapper mlp, k=5 visual tokens, captions cut to 10
tokens + EOS, the first 10 of 12 blocks frozen, AdamW 1e-4, grad clip 1.0, bf16 autocast on CUDA.
The images are JPEG files (500x375, smooth random colours) read through `ImageRef.from_file`,
5 random captions each.

Rows (each says what it runs):
- encode: `encode_images` on an empty $CAPEXP_CACHE (read + preprocess on one background thread,
  the encoder on the device, safetensors shards written); then its parts alone: `card.preprocess`
  on the CPU, and the module `card.load(device)` on ready pixels as `encode_images` calls it (fp32
  under inference_mode) and the same under bf16 autocast.
- train: `capexp.training.cross_entropy.train_cross_entropy` from the cached features: `CaptionData` from `encode_images` on the
  warm cache, `build_captioner` (the spec's decoder, mapper and freezing),
  then `train_cross_entropy` for a few epochs with its per-epoch evaluation of 1 validation image (val loss, a
  greedy caption, BERTScore with a tiny random BERT folder as `evaluation.bertscore_model`; COCO
  metrics off). Samples/s is (image, caption) pairs over `EpochResult.seconds` of the epochs after
  the first (which warms up); the end-to-end row times the cache read, the model build and every
  epoch. A row times that evaluation alone (`generate_captions` + `caption_metrics`, 1 image).
- caption: greedy, 10 tokens, from the cached features, with the untrained model (random weights
  rarely emit EOS, so every caption runs its 10 tokens; the mean length is shown):
  `capexp.model.decoding.generate_captions` (KV cache) against transformers'
  `generate(inputs_embeds=...)` on the same model under the same autocast, at the big batch and at
  batch 1, each after one untimed call; the last line counts identical captions.
Then, for every row with a target that it misses (every such row with --tiny), one call of it
under torch.profiler: the top operators by self device time (CPU time on the CPU) and the share
of the wall time the device was busy. A measurement that fails prints its error in its row and
the rest still runs. Prints one table; exits 0 (2 without CUDA and without --tiny; 3 when an
import is missing: install the wheelhouse, see benchmarks/README.md).
The shapes, targets, inputs, timing, profiling and the table are in benchmarks/_gpu_parts.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _folder in (REPO, REPO / "benchmarks"):  # capexp is not installed on the GPU machine: import it from the
    if str(_folder) not in sys.path:  # checkout; _gpu_parts.py lies beside this script
        sys.path.insert(0, str(_folder))

os.environ.setdefault("TQDM_DISABLE", "1")  # read when tqdm is imported: fit's bars would fill the log

try:  # capexp's code this benchmark drives, in one block (module moves are fixed here)
    import torch

    from capexp.backbones import resolve_encoder
    from capexp.data import ImageRef
    from capexp.model.decoding import generate_captions
    from capexp.backbones.feature_cache import encode_images
    from capexp.evaluation.metrics import caption_metrics
    from capexp.spec.schema import Spec
    from capexp.model.captioner import build_captioner
    from capexp.training.cross_entropy import CaptionData, pick_device, train_cross_entropy

    from _gpu_parts import (CAPTIONS_PER_IMAGE, FULL, MAX_TOKENS, TINY, Sizes, Table, make_spec, met, model_folders,
                            profile_once, random_references, report, timer, write_photos)
except ImportError as _missing:  # pydantic (capexp.spec.schema) or bert-score are not on the GPU image
    print(f"gpu_full_size.py: {_missing}; on the GPU machine install the wheelhouse first "
          "(benchmarks/gpu_wheelhouse.sh, then the command in benchmarks/README.md)", file=sys.stderr)
    sys.exit(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes on the CPU, to check the script")
    args = parser.parse_args(argv)

    device = torch.device("cpu") if args.tiny else pick_device(True)  # capexp's own choice: CUDA if present
    if device.type == "cpu" and not args.tiny:
        print("gpu_full_size.py: no CUDA device; run it on the GPU machine, or with --tiny on the CPU", file=sys.stderr)
        return 2
    if args.tiny:
        torch.set_num_threads(1)  # tiny ops: a second thread only adds contention on a shared machine
    tmp = Path(tempfile.mkdtemp(prefix="capexp-gpu-bench-"))
    os.environ["CAPEXP_CACHE"] = str(tmp / "cache")
    try:
        _bench(TINY if args.tiny else FULL, device, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


@dataclass
class _Bench:
    """What the measurements share: shapes, device, model folders, the run's spec, encoder card and images."""

    sizes: Sizes
    device: torch.device
    timed: Callable[[Callable[[], Any]], tuple[float, Any]]
    folders: tuple[Path, Path, Path]  # CLIP, GPT-2 and BERT model folders
    spec: Spec
    card: Any
    images: list[ImageRef]
    table: Table = field(default_factory=Table)
    model: Any = None  # the untrained captioner that captions, and later evaluates and is profiled
    tokenizer: Any = None

    def spec_for(self, batch: int, epochs: int) -> Spec:
        return make_spec(self.sizes, *self.folders, batch, epochs)

    def fresh_model(self, spec: Spec):
        """What run_spec builds: the spec's decoder and tokenizer, its mapper and freezing."""
        return build_captioner(spec, None, card=self.card)


def _bench(sizes: Sizes, device: torch.device, tmp: Path) -> None:
    """Every row in order (encode, caption, train, the trainer's eval), the table, then the profiles."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    clip_dir, gpt2_dir, bert_dir, clip_params, gpt2_params = model_folders(sizes, tmp)
    spec = make_spec(sizes, clip_dir, gpt2_dir, bert_dir)
    card = resolve_encoder(spec.clip_config.model, spec.clip_config.image_size, spec.clip_config.features)
    run = _Bench(sizes, device, timer(device), (clip_dir, gpt2_dir, bert_dir), spec, card,
                 write_photos(sizes, tmp / "photos"))
    _encode_rows(run)
    features = encode_images(card, run.images, device=device, progress=False).features
    references = _caption_rows(run, features)  # untrained model; before any training
    val = CaptionData([run.images[0].image_id], features[:1], references[:1])
    _train_rows(run, references, val)
    _evaluation_row(run, val)
    big = sizes.caption_batch
    run.table.profiles["train 512"] = (f"fit, 1 epoch at batch {big}", lambda: train_cross_entropy(
        run.model, run.tokenizer, CaptionData([im.image_id for im in run.images], features, references), val,
        run.spec_for(big, 1), device, on_epoch=lambda r: None))
    report(sizes, device, run.table, clip_params, gpt2_params)
    _profile_missed(run)


# ---------------------------------------------------------------------------- encode
def _encode_rows(run: _Bench) -> None:
    """encode_images on images not cached yet, then its parts alone: preprocessing and the encoder module."""
    card, images, device = run.card, run.images, run.device

    def renamed(prefix: str, n: int) -> list[ImageRef]:
        """The first n image files under new cache keys: encoded again, not read from the cache."""
        return [ImageRef(f"{prefix}-{i}", f"{prefix}:{i}", im.path) for i, im in enumerate(images[:n])]

    encode_images(card, renamed("warm-up", 8), device=device, progress=False)  # CUDA, cuBLAS and cuDNN start

    def encode_cold() -> tuple[float, str]:
        seconds, enc = run.timed(lambda: encode_images(card, images, device=device, batch_size=256, progress=False))
        assert enc.n_encoded == len(images), enc
        return len(images) / seconds, f"{1000 * seconds / len(images):.3f} ms/image"

    run.table.row("encode_images, images not cached (JPEG files), img/s", 256, encode_cold, "encode")
    run.table.profiles["encode"] = (f"encode_images, {len(images[:512])} new images", lambda: encode_images(
        card, renamed("again", 512), device=device, batch_size=256, progress=False))
    pils = [im.load() for im in images[:256]]

    def preprocess() -> tuple[float, str]:
        seconds, _ = run.timed(lambda: card.preprocess(pils))
        return len(pils) / seconds, f"{1000 * seconds / len(pils):.3f} ms/image, 1 thread"

    run.table.row("  its part: card.preprocess (resize, normalize), img/s", 256, preprocess)
    _encoder_module_rows(run, pils)


def _encoder_module_rows(run: _Bench, pils: list) -> None:
    """The module `card.load(device)` on ready pixels, as encode_images calls it (fp32), then under bf16."""
    encoder = run.card.load(run.device)
    pixels = run.card.preprocess(pils).to(run.device)

    def encoder_alone(bf16: bool) -> Callable[[], tuple[float, str]]:
        def measure() -> tuple[float, str]:
            autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and run.device.type == "cuda")
            call = lambda: [encoder(pixels) for _ in range(4)]  # noqa: E731
            with torch.inference_mode(), autocast:
                call()  # warm-up
                seconds, _ = run.timed(call)
            return 4 * len(pixels) / seconds, f"{1000 * seconds / 4 / len(pixels):.3f} ms/image"
        return measure

    run.table.row("  its part: card.load() module, fp32 as it runs, img/s", 256, encoder_alone(False))
    run.table.row("  same module under bf16 autocast, img/s", 256, encoder_alone(True))


# ---------------------------------------------------------------------------- caption
def _caption_rows(run: _Bench, features: torch.Tensor) -> list[list[str]]:
    """Greedy captions of an untrained model, capexp against transformers, at the big batch and at batch 1.

    Returns the training references (their random ids stop below the tokenizer's EOS)."""
    run.model, run.tokenizer = run.fresh_model(run.spec)
    references = random_references(len(run.images), run.tokenizer.eos_token_id)
    run.model.to(run.device).eval()
    for batch, n in ((run.sizes.caption_batch, run.sizes.caption_images), (1, run.sizes.single_captions)):
        for name, what in (("capexp", "capexp generate_captions"), ("transformers", "transformers generate")):
            run.table.row(f"caption greedy {MAX_TOKENS} tok: {what}, img/s", batch,
                          _captioning(run, features, name, batch, n), f"caption {name} {batch}")
    run.model = None  # freed for training; the profiles caption with the model the trainer's eval row builds
    return references


def _captioning(run: _Bench, features: torch.Tensor, name: str, batch: int, n: int) -> Callable[[], tuple[float, str]]:
    """The measurement of one caption row (`name`: capexp or transformers), and its call to profile."""

    def call(m: int) -> list[str]:
        if name == "capexp":
            return generate_captions(run.model, run.tokenizer, features[:m], max_tokens=MAX_TOKENS, batch_size=batch,
                                     device=run.device)
        return _hf_captions(run.model, run.tokenizer, features[:m], batch, run.device)

    def measure() -> tuple[float, str]:
        call(batch if batch > 1 else 2)  # warm-up
        seconds, out = run.timed(lambda: call(n))
        run.table.captions[f"{name} {batch}"] = out
        tokens = sum(len(c.split()) for c in out) / len(out)
        return n / seconds, f"{1000 * seconds / n:.2f} ms/image, {tokens:.1f} tokens"

    run.table.profiles[f"caption {name} {batch}"] = (f"generate_captions, {batch} image(s) at batch {batch}",
                                                     lambda: call(batch))
    return measure


def _hf_captions(model, tokenizer, features: torch.Tensor, batch_size: int, device: torch.device) -> list[str]:
    """Greedy captions through transformers' generate: the same prefix embeddings in, new tokens out."""
    eos = tokenizer.eos_token_id
    cuda = device.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    out: list[list[int]] = []
    with torch.inference_mode(), autocast:
        for start in range(0, len(features), batch_size):
            prefix = model.prefix(features[start : start + batch_size].to(device))  # (B, k, D)
            prefix = prefix.to(model.decoder.get_input_embeddings().weight.dtype)
            mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=device)  # (B, k)
            ids = model.decoder.generate(inputs_embeds=prefix, attention_mask=mask, max_new_tokens=MAX_TOKENS,
                                         do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=eos).tolist()
            out += [seq[: seq.index(eos)] if eos in seq else seq for seq in ids]
    return [text.strip() for text in tokenizer.batch_decode(out, skip_special_tokens=True)]


# ---------------------------------------------------------------------------- train
def _train_rows(run: _Bench, references: list[list[str]], val: CaptionData) -> None:
    """Per training shape: samples/s of the epochs after the 1st, and of the whole run from the cache read."""
    n_pairs = len(run.images) * CAPTIONS_PER_IMAGE
    for batch, epochs in run.sizes.train:
        done: dict[str, tuple[float, list[float]]] = {}

        def steady(batch: int = batch, epochs: int = epochs) -> tuple[float, str]:
            total, seconds = done["fit"] = _fit_timed(run, references, val, batch, epochs)
            later = seconds[1:]
            return (n_pairs * len(later) / sum(later),
                    f"epochs 2-{epochs}: {sum(later) / len(later):.2f} s each; 1st {seconds[0]:.2f} s")

        run.table.row("train: capexp.training.cross_entropy.train_cross_entropy, epochs after the 1st, samples/s",
                      batch, steady, f"train {batch}")
        if "fit" in done:
            total, seconds = done["fit"]
            run.table.row("train: cache read + build_captioner + train_cross_entropy, all epochs, samp/s", batch,
                          lambda: (n_pairs * len(seconds) / total, f"{total:.2f} s for {len(seconds)} epochs"))


def _fit_timed(run: _Bench, references: list[list[str]], val: CaptionData, batch: int,
               epochs: int) -> tuple[float, list[float]]:
    """Wall seconds of cache read + build + fit, and fit's `EpochResult.seconds` of each epoch."""
    spec = run.spec_for(batch, epochs)

    def end_to_end() -> list[float]:
        cached = encode_images(run.card, run.images, device=run.device, progress=False)  # warm: all from the shards
        data = CaptionData([run.images[i].image_id for i in cached.kept], cached.features, references)
        model, tokenizer = run.fresh_model(spec)
        return [r.seconds for r in train_cross_entropy(model, tokenizer, data, val, spec, run.device,
                                                       on_epoch=lambda r: None)]

    return run.timed(end_to_end)


def _evaluation_row(run: _Bench, val: CaptionData) -> None:
    """The trainer's per-epoch evaluation alone (caption + BERTScore of 1 image), on a fresh untrained model."""
    run.model, run.tokenizer = run.fresh_model(run.spec)
    run.model.to(run.device)

    def evaluation() -> tuple[float, str]:
        def once() -> None:
            out = generate_captions(run.model, run.tokenizer, val.features, max_tokens=MAX_TOKENS, device=run.device)
            caption_metrics(out, val.references, run.spec.evaluation, device=str(run.device))

        once()  # loads the BERTScore model, as fit's first epoch does
        seconds, _ = run.timed(once)
        return 1000 * seconds, "ms: caption + BERTScore of 1 image"

    run.table.row("train: the trainer's per-epoch eval, its caption and BERTScore", 1, evaluation)


# ---------------------------------------------------------------------------- profiles
def _profile_missed(run: _Bench) -> None:
    """One call of each measurement that misses its target (with --tiny, of each that has one) under torch.profiler."""
    sizes = run.sizes
    for key, (label, fn) in run.table.profiles.items():
        value = run.table.value(key)
        if sizes is TINY and key in FULL.targets or key in sizes.targets and (
                value is None or not met(sizes.targets[key][1], value)):
            try:
                profile_once(label, fn, run.device)
            except Exception as e:  # a profile that fails must not hide the others
                print(f"\nprofile: {label}: failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main())
