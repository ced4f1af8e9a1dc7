"""The parts of benchmarks/gpu_full_size.py that are not measurements: the shapes and targets, the
inputs (random model folders, JPEG files, captions, the spec), timing, profiling and the table."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from capexp.data import ImageRef
from capexp.spec.schema import Spec

__all__ = ["CAPTIONS_PER_IMAGE", "EOS", "FULL", "K", "MAX_TOKENS", "TINY", "Sizes", "Table", "make_spec", "met",
           "model_folders", "profile_once", "random_references", "report", "timer", "write_photos"]

K, MAX_TOKENS, CAPTIONS_PER_IMAGE = 5, 10, 5
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Sizes:
    """The shapes of one run, and the targets its rows are held to."""

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


FULL = Sizes(2048, (500, 375), 224, {}, {}, 10, ((512, 3), (64, 2)), 512, 2048, 32, {
    "encode": (">= 20,000 img/s", 20_000), "train 512": (">= 8,000 samples/s", 8_000),
    "caption capexp 512": (">= 7,000 img/s", 7_000), "caption capexp 1": ("<= 20 ms/image", -20)})
TINY = Sizes(64, (48, 40), 32, {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
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


def model_folders(sizes: Sizes, root: Path) -> tuple[Path, Path, Path, float, float]:
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
    words = [str(i) for i in range(config.vocab_size - 1)] + [EOS]
    _word_tokenizer(words, eos_token=EOS, pad_token=EOS).save_pretrained(root / "gpt2")
    # BERTScore's model in fit's evaluation: tiny and random (the scores mean nothing; the cost is realistic small)
    vocab = root / "bert-vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"0123456789",
                                *(f"##{d}" for d in "0123456789")]) + "\n")
    BertTokenizer(str(vocab), model_max_length=64).save_pretrained(root / "bert")
    BertModel(BertConfig(vocab_size=25, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(root / "bert")
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    return root / "clip", root / "gpt2", root / "bert", count(clip), count(gpt2)


def write_photos(sizes: Sizes, folder: Path) -> list[ImageRef]:
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


def random_references(n_images: int, eos: int) -> list[list[str]]:
    """5 captions per image of 5..12 random token ids below `eos` (the last id); `tokenize` cuts them to 10."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 13, (n_images, CAPTIONS_PER_IMAGE), generator=gen).tolist()
    return [[" ".join(map(str, torch.randint(0, eos, (n,), generator=gen).tolist())) for n in row]
            for row in lengths]


def make_spec(sizes: Sizes, clip: Path, gpt2: Path, bert: Path, batch: int = 64, epochs: int = 1) -> Spec:
    """The validated spec of the run: its model folders, and the batch size and epochs of one training row."""
    return Spec.model_validate({
        "id": "gpu-full-size", "seed": 0,
        "clip_config": {"model": str(clip), "image_size": [sizes.image_px, sizes.image_px]},
        "gpt2_config": {"model": str(gpt2), "visual_tokens_length": K, "text_tokens_max_length": MAX_TOKENS,
                        "n_layers_to_freeze": sizes.freeze, "mapper": "mlp"},
        "training_config": {"batch_size": batch, "num_epochs": epochs, "learning_rate": 1e-4, "grad_clip": 1.0,
                            "enable_GPU": True},
        "evaluation": {"bertscore_model": str(bert), "coco_metrics": False, "max_images": 1,
                       "batch_size": sizes.caption_batch},
    })


# ---------------------------------------------------------------------------- timing and profiling
def timer(device: torch.device) -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    """A function that times one call (seconds, its result), waiting for the device before and after."""

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, out

    return timed


def profile_once(label: str, fn: Callable[[], Any], device: torch.device) -> None:
    """One call of `fn` under torch.profiler: top operators, and how busy the device was."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    seconds, prof = timer(device)(lambda: _profiled(fn, activities))
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

# ---------------------------------------------------------------------------- the table
_Row = tuple[str, int, float | None, str, str]  # (measure, batch, value, per item or error, target key)


@dataclass
class Table:
    """The rows measured so far, one call of each measurement to profile, and the captions to compare."""

    rows: list[_Row] = field(default_factory=list)
    profiles: dict[str, tuple[str, Callable[[], Any]]] = field(default_factory=dict)  # key -> (label, one call)
    captions: dict[str, list[str]] = field(default_factory=dict)  # "capexp 512" -> its captions

    def row(self, name: str, batch: int, fn: Callable[[], tuple[float, str]], key: str = "") -> None:
        """Run one measurement into a row; a failure becomes its row's error."""
        try:
            value, per_item = fn()
            self.rows.append((name, batch, value, per_item, key))
        except Exception as e:  # one failed measurement must not hide the others
            message = str(e).splitlines()[0][:120] if str(e) else ""
            self.rows.append((name, batch, None, f"failed: {type(e).__name__}: {message}", key))

    def value(self, key: str) -> float | None:
        """The value of the first row with target `key` (None: no such row, or it failed)."""
        return next((r[2] for r in self.rows if r[4] == key), None)


def met(threshold: float, value: float) -> bool:
    """Positive threshold: value (per second) at least that; negative: ms per item (1000 / value) at most -threshold."""
    return value >= threshold if threshold > 0 else 1000 / value <= -threshold


def report(sizes: Sizes, device: torch.device, table: Table, clip_params: float, gpt2_params: float) -> None:
    """The heading, one line per row with its target met or MISSED, and how many captions agree."""
    import transformers

    captions = table.captions
    mine, hf = captions.get(f"capexp {sizes.caption_batch}"), captions.get(f"transformers {sizes.caption_batch}")
    agree = f"{sum(a == b for a, b in zip(mine, hf))} of {len(mine)}" if mine and hf else "n/a (a run failed)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\nGPU full size{' (--tiny shapes)' if sizes is TINY else ''}: {name}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; CLIP vision {clip_params:.1f}M + GPT-2 {gpt2_params:.1f}M "
          f"params, random weights, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}; k={K}, "
          f"{MAX_TOKENS} caption tokens, {sizes.freeze} blocks frozen; {sizes.images} images x "
          f"{CAPTIONS_PER_IMAGE} captions")
    print(f"{'measure':<58} | {'batch':>5} | {'value':>9} | {'detail':<44} | target")
    print("-" * 140)
    for measure, batch, value, detail, key in table.rows:
        shown, threshold = sizes.targets.get(key, ("", 0.0))
        if shown and value is not None:
            shown += " met" if met(threshold, value) else " MISSED"
        print(f"{measure:<58} | {batch:>5} | {'' if value is None else f'{value:,.0f}':>9} | {detail:<44} | {shown}")
    print("-" * 140)
    print(f"greedy captions identical, capexp vs transformers at batch {sizes.caption_batch}: {agree}")
