"""Full-size GPU benchmark: CLIP ViT-B/32 + GPT-2 small shapes, random weights, bf16 autocast.

    python benchmarks/gpu_full_size.py          # on the GPU machine: one call, about a minute (estimated)
    python benchmarks/gpu_full_size.py --tiny   # small shapes on the CPU: checks that it runs

Made for the lent GPU machine, which has torch and transformers but no network and none of
capexp's other dependencies: it imports only `capexp.backbones`, `capexp.features`,
`capexp.model` and `capexp.decoding` (torch, transformers, safetensors, tqdm, numpy, pillow),
never the hub. The model is the seed's at full size with random weights (speed does not
depend on them): a `CLIPVisionConfig()` tower (ViT-B/32, 512-d projection), the MLP mapper
to k=5 visual tokens and a `GPT2Config()` decoder (GPT-2 small) with the seed's first 10 of 12
blocks frozen; captions of 10 tokens + EOS.

Rows:
- encode: `capexp.features.encode_images` on an empty cache (a temporary $CAPEXP_CACHE):
  synthetic 224x224 photos (random pixels, 5 random captions each) read, preprocessed,
  encoded on the GPU and written as safetensors shards.
- train: end to end from the warm cache: `encode_images` reading every feature back from the
  shards, then one epoch over all (image, caption) pairs with the training step of
  `capexp.train.fit` (bf16 autocast, loss on caption tokens, backward, grad clip 1.0, AdamW
  1e-4, `loss.item()` each step), features indexed on the CPU and copied per batch as `fit`
  does. `capexp.train` itself cannot be imported there (it imports `capexp.spec`, which needs
  pydantic), so this loop restates `fit`'s; three untimed steps warm up each batch size.
- caption: greedy, 10 tokens, from the cached features, with the untrained model (random
  weights emit EOS about once in 50,000 steps, so every caption runs its 10 tokens; the mean
  length is shown): `capexp.decoding.generate_captions` (KV cache) against transformers'
  `generate(inputs_embeds=...)` on the same model under the same autocast, at batch 512 and at
  batch 1 (ms per caption), each after one untimed call; the last line counts identical
  captions. Captions are token ids joined by spaces: no GPT-2 vocabulary reaches the machine.
A measurement that fails (an older transformers, say) prints its error in its row and the
rest still runs. Prints one table; exits 0.
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

_K, _MAX_TOKENS, _CAPTIONS_PER_IMAGE = 5, 10, 5


@dataclass(frozen=True)
class _Sizes:
    images: int  # synthetic images in the cache
    image_px: int
    clip: dict[str, int]  # CLIPVisionConfig overrides ({}: ViT-B/32)
    gpt2: dict[str, int]  # GPT2Config overrides ({}: GPT-2 small)
    freeze: int  # decoder blocks frozen
    train_batches: tuple[int, ...]
    caption_batch: int
    caption_images: int  # captioned at `caption_batch`
    single_captions: int  # captioned one at a time
    targets: dict[str, str]


_FULL = _Sizes(2048, 224, {}, {}, 10, (512, 64), 512, 2048, 32,
               {"train 512": ">= 8,000", "caption capexp 512": ">= 7,000", "caption capexp 1": "<= 20 ms"})
_TINY = _Sizes(64, 32, {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "image_size": 32, "patch_size": 8, "projection_dim": 32},
               {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64, "vocab_size": 1000,
                "bos_token_id": 999, "eos_token_id": 999}, 1, (32, 8), 32, 64, 4, {})


@dataclass(frozen=True)
class _SyntheticImage:
    """What `encode_images` needs of an `ImageRef` (capexp.datasets needs pydantic): a name, a cache key, pixels."""

    image_id: str
    key: str
    px: int

    def load(self):
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(int(self.image_id))
        return Image.fromarray(rng.integers(0, 256, (self.px, self.px, 3), dtype=np.uint8))


class _IdTokenizer:
    """What decoding needs of a tokenizer: EOS, and token ids to text (here the ids themselves)."""

    def __init__(self, eos: int) -> None:
        self.eos_token_id = self.pad_token_id = eos

    def batch_decode(self, sequences: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(map(str, seq)) for seq in sequences]


def _synced(device) -> Callable[[Callable[[], Any]], tuple[float, Any]]:
    import torch

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, out

    return timed


def _autocast(device):
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _captions_tokens(n_pairs: int, eos: int, seed: int):
    """Random caption ids (below `eos`) of 5..10 tokens + EOS, right-padded with EOS, and their mask: (M, 11) each."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, eos, (n_pairs, _MAX_TOKENS + 1), generator=gen)
    lengths = torch.randint(5, _MAX_TOKENS + 1, (n_pairs,), generator=gen) + 1  # EOS included
    mask = (torch.arange(_MAX_TOKENS + 1)[None, :] < lengths[:, None]).long()
    ids[mask == 0] = eos
    ids[torch.arange(n_pairs), lengths - 1] = eos
    return ids, mask


def _training_step(model, image_index, ids, mask, device) -> Callable[[Any, Any], float]:
    """`fit`'s training step, with its own AdamW: step(features (N, F) on the CPU, rows (B,)) -> loss."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

    def step(features, rows) -> float:
        model.train()
        with _autocast(device):
            loss = model(features[image_index[rows]].to(device), ids[rows].to(device), mask[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss.item()

    return step


def _hf_captions(model, features, batch_size: int, eos: int, device) -> list[str]:
    """Greedy captions through transformers' generate: the same prefix embeddings in, new tokens out."""
    import torch

    out: list[str] = []
    with torch.inference_mode(), _autocast(device):
        for start in range(0, len(features), batch_size):
            prefix = model.prefix(features[start : start + batch_size].to(device))  # (B, k, D)
            prefix = prefix.to(model.decoder.get_input_embeddings().weight.dtype)
            mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=device)  # (B, k)
            ids = model.decoder.generate(inputs_embeds=prefix, attention_mask=mask, max_new_tokens=_MAX_TOKENS,
                                         do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=eos).tolist()
            out += [" ".join(map(str, seq[: seq.index(eos)] if eos in seq else seq)) for seq in ids]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes on the CPU, to check the script")
    args = parser.parse_args(argv)

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cpu" and not args.tiny:
        print("gpu_full_size.py: no CUDA device; run it on the GPU machine, or with --tiny on the CPU", file=sys.stderr)
        return 2
    if args.tiny:
        torch.set_num_threads(1)  # tiny ops: a second thread only adds contention on a shared machine
    tmp = Path(tempfile.mkdtemp(prefix="capexp-gpu-bench-"))
    os.environ["CAPEXP_CACHE"] = str(tmp / "cache")
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        _bench(_TINY if args.tiny else _FULL, device, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _bench(sizes: _Sizes, device, tmp: Path) -> None:
    import torch
    import transformers
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, GPT2Config, GPT2LMHeadModel

    from capexp.backbones import resolve_encoder
    from capexp.decoding import generate_captions
    from capexp.features import encode_images
    from capexp.model import ClipCap, build_mapper, freeze_blocks

    transformers.utils.logging.disable_progress_bar()
    timed = _synced(device)
    n_params = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    torch.manual_seed(0)
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**sizes.clip))
    clip_params = n_params(clip)
    clip.save_pretrained(tmp / "clip")  # read back by the encoder card, as a user's local model folder
    del clip
    card = resolve_encoder(str(tmp / "clip"), (sizes.image_px, sizes.image_px))
    with device:
        decoder = GPT2LMHeadModel(GPT2Config(**sizes.gpt2))
    eos = decoder.config.eos_token_id
    blocks = decoder.transformer.h
    freeze_blocks(blocks, sizes.freeze)
    width = decoder.get_input_embeddings().embedding_dim
    model = ClipCap(decoder, build_mapper("mlp", card.feature_dim, width, _K)).to(device)
    tokenizer = _IdTokenizer(eos)
    images = [_SyntheticImage(str(i), f"synthetic:{sizes.image_px}:{i}", sizes.image_px) for i in range(sizes.images)]
    image_index = torch.arange(sizes.images).repeat_interleave(_CAPTIONS_PER_IMAGE)  # (M,)
    ids, mask = _captions_tokens(len(image_index), eos, seed=0)

    rows: list[tuple[str, int, str, str, str]] = []  # (measure, batch, value, per item, target)

    def row(name: str, batch: int, fn: Callable[[], tuple[float, str]], target_key: str = "") -> None:
        try:
            value, per_item = fn()
            rows.append((name, batch, f"{value:,.0f}", per_item, sizes.targets.get(target_key, "")))
        except Exception as e:  # one failed measurement must not hide the others
            rows.append((name, batch, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}",
                         "", sizes.targets.get(target_key, "")))

    def encode_cold() -> tuple[float, str]:
        seconds, enc = timed(lambda: encode_images(card, images, device=device, batch_size=256, progress=False))
        assert enc.n_encoded == len(images), enc
        return len(images) / seconds, f"{1000 * seconds / len(images):.2f} ms/image"

    row("encode into the cache (cold), images/s", 256, encode_cold)

    features = encode_images(card, images, device=device, progress=False).features
    model.eval()  # untrained: random weights rarely emit EOS, so every caption runs its 10 tokens
    captions: dict[str, list[str]] = {}

    def ours(batch: int, n: int) -> list[str]:
        return generate_captions(model, tokenizer, features[:n], max_tokens=_MAX_TOKENS, batch_size=batch,
                                 device=device)

    def theirs(batch: int, n: int) -> list[str]:
        return _hf_captions(model, features[:n], batch, eos, device)

    def caption(name: str, batch: int, n: int) -> Callable[[], tuple[float, str]]:
        fn = ours if name == "capexp" else theirs

        def run() -> tuple[float, str]:
            fn(batch, batch if batch > 1 else 2)  # warm-up
            seconds, out = timed(lambda: fn(batch, n))
            captions[f"{name} {batch}"] = out
            tokens = sum(len(c.split()) for c in out) / len(out)
            return n / seconds, f"{1000 * seconds / n:.2f} ms/caption, {tokens:.1f} tokens"
        return run

    for batch, n in ((sizes.caption_batch, sizes.caption_images), (1, sizes.single_captions)):
        for name in ("capexp", "transformers"):
            row(f"caption greedy {_MAX_TOKENS} tokens, {name}, images/s", batch, caption(name, batch, n),
                f"caption {name} {batch}")

    def train(batch: int) -> Callable[[], tuple[float, str]]:
        def run() -> tuple[float, str]:
            step = _training_step(model, image_index, ids, mask, device)
            for _ in range(3):  # warm-up, untimed
                step(features, torch.arange(batch))

            def end_to_end() -> int:
                cached = encode_images(card, images, device=device, progress=False).features  # (N, F) from the shards
                order = torch.randperm(len(ids))
                for start in range(0, len(order), batch):
                    step(cached, order[start : start + batch])
                return len(order)

            seconds, n = timed(end_to_end)
            return n / seconds, f"{len(range(0, n, batch))} steps, {seconds:.2f} s"
        return run

    for batch in sizes.train_batches:
        row("train end to end from the cache, samples/s", batch, train(batch), f"train {batch}")

    mine, hf = captions.get(f"capexp {sizes.caption_batch}"), captions.get(f"transformers {sizes.caption_batch}")
    agree = f"{sum(a == b for a, b in zip(mine, hf))} of {len(mine)}" if mine and hf else "n/a (a run failed)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\nGPU full size{' (--tiny shapes)' if sizes is _TINY else ''}: {name}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; CLIP vision {clip_params:.1f}M + GPT-2 "
          f"{n_params(decoder):.1f}M params, random weights, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}; "
          f"k={_K}, {_MAX_TOKENS} caption tokens, {sizes.freeze} of {len(blocks)} blocks frozen; "
          f"{sizes.images} images x {_CAPTIONS_PER_IMAGE} captions")
    print(f"{'measure':<52} | {'batch':>5} | {'value':>10} | {'per item':<28} | target")
    print("-" * 112)
    for measure, batch, value, per_item, target in rows:
        print(f"{measure:<52} | {batch:>5} | {value:>10} | {per_item:<28} | {target}")
    print("-" * 112)
    print(f"greedy captions identical, capexp vs transformers at batch {sizes.caption_batch}: {agree}")


if __name__ == "__main__":
    sys.exit(main())
