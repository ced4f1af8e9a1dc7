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
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # capexp is not installed on the GPU machine: import it from the checkout
    sys.path.insert(0, str(REPO))

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
except ImportError as _missing:  # pydantic (capexp.spec.schema) or bert-score are not on the GPU image
    print(f"gpu_full_size.py: {_missing}; on the GPU machine install the wheelhouse first "
          "(benchmarks/gpu_wheelhouse.sh, then the command in benchmarks/README.md)", file=sys.stderr)
    sys.exit(3)

_K, _MAX_TOKENS, _CAPTIONS_PER_IMAGE = 5, 10, 5
_EOS = "<|endoftext|>"


@dataclass(frozen=True)
class _Sizes:
    images: int  # JPEG files encoded into the cache
    photo_px: tuple[int, int]  # (width, height) of each file
    image_px: int  # clip_config.image_size
    clip: dict[str, int]  # CLIPVisionConfig overrides ({}: ViT-B/32)
    gpt2: dict[str, int]  # GPT2Config overrides ({}: GPT-2 small)
    freeze: int  # decoder blocks frozen
    train: tuple[tuple[int, int], ...]  # (batch size, epochs) of each fit
    caption_batch: int
    caption_images: int  # captioned at `caption_batch`
    single_captions: int  # captioned one at a time
    targets: dict[str, tuple[str, float]]  # row key -> (shown, threshold: >= when positive, <= ms when negative)


_FULL = _Sizes(2048, (500, 375), 224, {}, {}, 10, ((512, 3), (64, 2)), 512, 2048, 32, {
    "encode": (">= 20,000 img/s", 20_000), "train 512": (">= 8,000 samples/s", 8_000),
    "caption capexp 512": (">= 7,000 img/s", 7_000), "caption capexp 1": ("<= 20 ms/image", -20)})
_TINY = _Sizes(64, (48, 40), 32, {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                  "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "projection_dim": 32},
               {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64, "vocab_size": 1000}, 1,
               ((32, 2), (8, 2)), 32, 64, 4, {})


# ---------------------------------------------------------------------------- inputs: model folders, images, captions
def _word_tokenizer(words: list[str], **special: str):
    """A word-level fast tokenizer over `words` (split on whitespace; ids in list order)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[-1]))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=1024, **special)


def _model_folders(sizes: _Sizes, root: Path) -> tuple[Path, Path, Path, float, float]:
    """Random CLIP vision, GPT-2 (+ its id tokenizer) and tiny BERT folders; CLIP and GPT-2 parameters (M)."""
    from transformers import (BertConfig, BertModel, BertTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection,
                              GPT2Config, GPT2LMHeadModel)

    torch.manual_seed(0)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**sizes.clip))
    clip.save_pretrained(root / "clip")
    config = GPT2Config(**sizes.gpt2)
    config.bos_token_id = config.eos_token_id = config.vocab_size - 1
    gpt2 = GPT2LMHeadModel(config)
    gpt2.save_pretrained(root / "gpt2")
    words = [str(i) for i in range(config.vocab_size - 1)] + [_EOS]
    _word_tokenizer(words, eos_token=_EOS, pad_token=_EOS).save_pretrained(root / "gpt2")
    # BERTScore's model in fit's evaluation: tiny and random (the scores mean nothing; the cost is realistic small)
    vocab = root / "bert-vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"0123456789",
                                *(f"##{d}" for d in "0123456789")]) + "\n")
    BertTokenizer(str(vocab), model_max_length=64).save_pretrained(root / "bert")
    BertModel(BertConfig(vocab_size=25, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(root / "bert")
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    return root / "clip", root / "gpt2", root / "bert", count(clip), count(gpt2)


def _photos(sizes: _Sizes, folder: Path) -> list[ImageRef]:
    """JPEG files of smooth random colours (a noise JPEG would be unrealistically slow to decode)."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    refs = []
    for i in range(sizes.images):
        small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        path = folder / f"{i:05d}.jpg"
        small.resize(sizes.photo_px, Image.Resampling.BILINEAR).save(path, quality=90)
        refs.append(ImageRef.from_file(path))
    return refs


def _references(n_images: int, eos: int) -> list[list[str]]:
    """5 captions per image of 5..12 random token ids below `eos` (the last id); `tokenize` cuts them to 10."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 13, (n_images, _CAPTIONS_PER_IMAGE), generator=gen).tolist()
    return [[" ".join(map(str, torch.randint(0, eos, (n,), generator=gen).tolist())) for n in row]
            for row in lengths]


def _spec(sizes: _Sizes, clip: Path, gpt2: Path, bert: Path, batch: int = 64, epochs: int = 1) -> Spec:
    return Spec.model_validate({
        "id": "gpu-full-size", "seed": 0,
        "clip_config": {"model": str(clip), "image_size": [sizes.image_px, sizes.image_px]},
        "gpt2_config": {"model": str(gpt2), "visual_tokens_length": _K, "text_tokens_max_length": _MAX_TOKENS,
                        "n_layers_to_freeze": sizes.freeze, "mapper": "mlp"},
        "training_config": {"batch_size": batch, "num_epochs": epochs, "learning_rate": 1e-4, "grad_clip": 1.0,
                            "enable_GPU": True},
        "evaluation": {"bertscore_model": str(bert), "coco_metrics": False, "max_images": 1,
                       "batch_size": sizes.caption_batch},
    })


# ---------------------------------------------------------------------------- timing and profiling
def _timer(device: torch.device) -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, out

    return timed


def _profile(label: str, fn: Callable[[], Any], device: torch.device) -> None:
    """One call of `fn` under torch.profiler: top operators, and how busy the device was."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    seconds, prof = _timer(device)(lambda: _profiled(fn, activities))
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]  # as the table's "Self CUDA time total"
    busy = sum(e.self_device_time_total for e in kernels) if cuda else sum(e.self_cpu_time_total for e in events)
    busy /= 1e6  # us -> s
    launches = f", {sum(e.count for e in kernels)} kernel launches" if cuda else ""
    print(f"\nprofile: {label}: {seconds * 1000:.1f} ms wall, {'device busy' if cuda else 'operators'} "
          f"{busy * 1000:.1f} ms ({100 * busy / seconds:.0f}%){launches}")
    print(events.table(sort_by=key, row_limit=10, max_name_column_width=50))


def _profiled(fn: Callable[[], Any], activities) -> Any:
    from torch.profiler import profile

    with profile(activities=activities) as prof:
        fn()
    return prof


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
            ids = model.decoder.generate(inputs_embeds=prefix, attention_mask=mask, max_new_tokens=_MAX_TOKENS,
                                         do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=eos).tolist()
            out += [seq[: seq.index(eos)] if eos in seq else seq for seq in ids]
    return [text.strip() for text in tokenizer.batch_decode(out, skip_special_tokens=True)]


# ---------------------------------------------------------------------------- the benchmark
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
        _bench(_TINY if args.tiny else _FULL, device, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _bench(sizes: _Sizes, device: torch.device, tmp: Path) -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    timed = _timer(device)
    clip_dir, gpt2_dir, bert_dir, clip_params, gpt2_params = _model_folders(sizes, tmp)
    spec = _spec(sizes, clip_dir, gpt2_dir, bert_dir)
    card = resolve_encoder(spec.clip_config.model, spec.clip_config.image_size, spec.clip_config.features)
    images = _photos(sizes, tmp / "photos")

    def fresh_model(spec: Spec):
        """What run_spec builds: the spec's decoder and tokenizer, its mapper and freezing."""
        return build_captioner(spec, None, feature_dim=card.feature_dim)

    rows: list[tuple[str, int, float | None, str, str]] = []  # (measure, batch, value, per item or error, target key)
    profiles: dict[str, tuple[str, Callable[[], Any]]] = {}  # target key -> (label, one call to profile)

    def row(name: str, batch: int, fn: Callable[[], tuple[float, str]], key: str = "") -> None:
        try:
            value, per_item = fn()
            rows.append((name, batch, value, per_item, key))
        except Exception as e:  # one failed measurement must not hide the others
            message = str(e).splitlines()[0][:120] if str(e) else ""
            rows.append((name, batch, None, f"failed: {type(e).__name__}: {message}", key))

    # -- encode
    def renamed(prefix: str, n: int) -> list[ImageRef]:
        """The first n image files under new cache keys: encoded again, not read from the cache."""
        return [ImageRef(f"{prefix}-{i}", f"{prefix}:{i}", im.path) for i, im in enumerate(images[:n])]

    encode_images(card, renamed("warm-up", 8), device=device, progress=False)  # CUDA, cuBLAS and cuDNN start

    def encode_cold() -> tuple[float, str]:
        seconds, enc = timed(lambda: encode_images(card, images, device=device, batch_size=256, progress=False))
        assert enc.n_encoded == len(images), enc
        return len(images) / seconds, f"{1000 * seconds / len(images):.3f} ms/image"

    row("encode_images, images not cached (JPEG files), img/s", 256, encode_cold, "encode")
    profiles["encode"] = (f"encode_images, {len(images[:512])} new images", lambda: encode_images(
        card, renamed("again", 512), device=device, batch_size=256, progress=False))
    pils = [im.load() for im in images[:256]]

    def preprocess() -> tuple[float, str]:
        seconds, _ = timed(lambda: card.preprocess(pils))
        return len(pils) / seconds, f"{1000 * seconds / len(pils):.3f} ms/image, 1 thread"

    row("  its part: card.preprocess (resize, normalize), img/s", 256, preprocess)
    encoder = card.load(device)
    pixels = card.preprocess(pils).to(device)

    def encoder_alone(bf16: bool) -> Callable[[], tuple[float, str]]:
        def run() -> tuple[float, str]:
            autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
            call = lambda: [encoder(pixels) for _ in range(4)]  # noqa: E731
            with torch.inference_mode(), autocast:
                call()  # warm-up
                seconds, _ = timed(call)
            return 4 * len(pixels) / seconds, f"{1000 * seconds / 4 / len(pixels):.3f} ms/image"
        return run

    row("  its part: card.load() module, fp32 as it runs, img/s", 256, encoder_alone(False))
    row("  same module under bf16 autocast, img/s", 256, encoder_alone(True))
    del encoder, pixels, pils

    # -- caption (untrained model; before any training)
    features = encode_images(card, images, device=device, progress=False).features
    model, tokenizer = fresh_model(spec)
    references = _references(len(images), tokenizer.eos_token_id)
    model.to(device).eval()
    captions: dict[str, list[str]] = {}

    def caption(name: str, batch: int, n: int) -> Callable[[], tuple[float, str]]:
        def call(m: int) -> list[str]:
            if name == "capexp":
                return generate_captions(model, tokenizer, features[:m], max_tokens=_MAX_TOKENS, batch_size=batch,
                                         device=device)
            return _hf_captions(model, tokenizer, features[:m], batch, device)

        def run() -> tuple[float, str]:
            call(batch if batch > 1 else 2)  # warm-up
            seconds, out = timed(lambda: call(n))
            captions[f"{name} {batch}"] = out
            tokens = sum(len(c.split()) for c in out) / len(out)
            return n / seconds, f"{1000 * seconds / n:.2f} ms/image, {tokens:.1f} tokens"

        profiles[f"caption {name} {batch}"] = (f"generate_captions, {batch} image(s) at batch {batch}",
                                               lambda: call(batch))
        return run

    for batch, n in ((sizes.caption_batch, sizes.caption_images), (1, sizes.single_captions)):
        for name, what in (("capexp", "capexp generate_captions"), ("transformers", "transformers generate")):
            row(f"caption greedy {_MAX_TOKENS} tok: {what}, img/s", batch, caption(name, batch, n),
                f"caption {name} {batch}")
    del model

    # -- train through fit
    val = CaptionData([images[0].image_id], features[:1], references[:1])

    n_pairs = len(images) * _CAPTIONS_PER_IMAGE

    def fit_timed(batch: int, epochs: int) -> tuple[float, list[float]]:
        """Wall seconds of cache read + build + fit, and fit's `EpochResult.seconds` of each epoch."""
        spec_b = _spec(sizes, clip_dir, gpt2_dir, bert_dir, batch, epochs)

        def end_to_end() -> list[float]:
            cached = encode_images(card, images, device=device, progress=False)  # warm: every row from the shards
            data = CaptionData([images[i].image_id for i in cached.kept], cached.features, references)
            model, tokenizer = fresh_model(spec_b)
            return [r.seconds for r in train_cross_entropy(model, tokenizer, data, val, spec_b, device, on_epoch=lambda r: None)]

        return timed(end_to_end)

    for batch, epochs in sizes.train:
        done: dict[str, tuple[float, list[float]]] = {}

        def steady(batch: int = batch, epochs: int = epochs) -> tuple[float, str]:
            total, seconds = done["fit"] = fit_timed(batch, epochs)
            later = seconds[1:]
            return (n_pairs * len(later) / sum(later),
                    f"epochs 2-{epochs}: {sum(later) / len(later):.2f} s each; 1st {seconds[0]:.2f} s")

        row("train: capexp.training.cross_entropy.train_cross_entropy, epochs after the 1st, samples/s", batch, steady, f"train {batch}")
        if "fit" in done:
            total, seconds = done["fit"]
            row("train: cache read + build_captioner + train_cross_entropy, all epochs, samp/s", batch,
                lambda: (n_pairs * len(seconds) / total, f"{total:.2f} s for {len(seconds)} epochs"))

    model, tokenizer = fresh_model(spec)
    model.to(device)

    def evaluation() -> tuple[float, str]:
        def once() -> None:
            out = generate_captions(model, tokenizer, val.features, max_tokens=_MAX_TOKENS, device=device)
            caption_metrics(out, val.references, spec.evaluation, device=str(device))

        once()  # loads the BERTScore model, as fit's first epoch does
        seconds, _ = timed(once)
        return 1000 * seconds, "ms: caption + BERTScore of 1 image"

    row("train: the trainer's per-epoch eval, its caption and BERTScore", 1, evaluation)

    big = sizes.caption_batch
    profiles["train 512"] = (f"fit, 1 epoch at batch {big}", lambda: train_cross_entropy(
        model, tokenizer, CaptionData([im.image_id for im in images], features, references), val,
        _spec(sizes, clip_dir, gpt2_dir, bert_dir, big, 1), device, on_epoch=lambda r: None))
    _report(sizes, device, rows, captions, clip_params, gpt2_params)
    for key, (label, fn) in profiles.items():
        value = next((r[2] for r in rows if r[4] == key), None)
        if sizes is _TINY and key in _FULL.targets or key in sizes.targets and (
                value is None or not _met(sizes.targets[key][1], value)):
            try:
                _profile(label, fn, device)
            except Exception as e:  # a profile that fails must not hide the others
                print(f"\nprofile: {label}: failed: {type(e).__name__}: {e}")


def _met(threshold: float, value: float) -> bool:
    """Positive threshold: value (per second) at least that; negative: ms per item (1000 / value) at most -threshold."""
    return value >= threshold if threshold > 0 else 1000 / value <= -threshold


def _report(sizes: _Sizes, device: torch.device, rows, captions: dict[str, list[str]],
            clip_params: float, gpt2_params: float) -> None:
    import transformers

    mine, hf = captions.get(f"capexp {sizes.caption_batch}"), captions.get(f"transformers {sizes.caption_batch}")
    agree = f"{sum(a == b for a, b in zip(mine, hf))} of {len(mine)}" if mine and hf else "n/a (a run failed)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\nGPU full size{' (--tiny shapes)' if sizes is _TINY else ''}: {name}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; CLIP vision {clip_params:.1f}M + GPT-2 {gpt2_params:.1f}M "
          f"params, random weights, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}; k={_K}, "
          f"{_MAX_TOKENS} caption tokens, {sizes.freeze} blocks frozen; {sizes.images} images x "
          f"{_CAPTIONS_PER_IMAGE} captions")
    print(f"{'measure':<58} | {'batch':>5} | {'value':>9} | {'detail':<44} | target")
    print("-" * 140)
    for measure, batch, value, detail, key in rows:
        shown, threshold = sizes.targets.get(key, ("", 0.0))
        if shown and value is not None:
            shown += " met" if _met(threshold, value) else " MISSED"
        print(f"{measure:<58} | {batch:>5} | {'' if value is None else f'{value:,.0f}':>9} | {detail:<44} | {shown}")
    print("-" * 140)
    print(f"greedy captions identical, capexp vs transformers at batch {sizes.caption_batch}: {agree}")


if __name__ == "__main__":
    sys.exit(main())
