"""The self-critical step's log-probability pass: `ClipCap.token_logprobs` against a full-width pass.

    python benchmarks/scst_logprobs.py [--images 32] [--samples 5] [--steps 10] [--threads 1] [--data DIR]

Each self-critical step scores the sampled captions (`--images` x `--samples` rows, cut to 20
tokens) under the model, forward and backward. `token_logprobs` cuts the columns past the
longest caption before the decoder runs and applies the LM head to caption positions only; the
baseline runs the decoder and the head over every column (the previous implementation). The
model is `experiments/flickr8k.json`'s (gpt2-mini cut to the training vocabulary, MLP mapper,
5 visual tokens, random weights: only the shapes matter); the captions are Flickr8k training
references (their real lengths; sampled captions of a trained model are a little shorter), the
features random. Both passes see the same batches, alternating which goes first. Prints the
mean seconds per step of each, their ratio and the largest difference between their log-probs;
exits 1 if that exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_MAX_TOKENS = 20
_ATOL = 1e-4


def _full_width(model, prefix, input_ids, attention_mask):
    """The baseline: decoder and LM head over all columns, padding zeroed afterwards."""
    import torch

    tokens = model.embed_tokens(input_ids)
    embeds = torch.cat([prefix, tokens], dim=1)
    mask = torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1)
    hidden = model.decoder.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[:, prefix.shape[1] - 1 : -1]
    logits = model.decoder.get_output_embeddings()(hidden).float()
    return (logits.gather(-1, input_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)) * attention_mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images per step (scst.batch_size)")
    parser.add_argument("--samples", type=int, default=5, help="captions per image (scst.samples)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0: torch's default")
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("CAPEXP_DATA", REPO.parent / "shared" / "data")) / "flickr8k")
    args = parser.parse_args(argv)

    import torch

    from capexp.backbones import load_decoder, resolve_encoder
    from capexp.data import load_data
    from capexp.model.captioner import build_captioner
    from capexp.spec.loading import load_spec
    from capexp.training.cross_entropy import tokenize
    from capexp.model.vocabulary import training_vocabulary

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(REPO / "experiments" / "flickr8k.json", [f'data_paths.root="{args.data}"'])
    train = load_data(spec).train
    torch.manual_seed(0)
    decoder = load_decoder(spec.gpt2_config.model)
    card = resolve_encoder(spec.clip_config.model, spec.clip_config.image_size)  # 1280-d pooled features
    model, tokenizer = build_captioner(spec, training_vocabulary(decoder[1], train.captions), card=card, decoder=decoder)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    rows = args.images * args.samples
    times = {"token_logprobs": 0.0, "full width": 0.0}
    worst = 0.0
    for step in range(args.steps):
        picked = torch.randint(len(train.captions), (rows,), generator=gen).tolist()
        ids, mask = tokenize(tokenizer, [train.captions[i][step % 5] for i in picked], _MAX_TOKENS)
        features = torch.randn(args.images, 1280, generator=gen)
        out = {}
        order = [("token_logprobs", model.token_logprobs), ("full width", lambda p, i, m: _full_width(model, p, i, m))]
        for name, fn in order if step % 2 else order[::-1]:
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            logp = fn(model.prefix(features).repeat_interleave(args.samples, dim=0), ids, mask)
            logp.sum().backward()
            times[name] += time.perf_counter() - started
            out[name] = logp.detach()
        worst = max(worst, float((out["token_logprobs"] - out["full width"]).abs().max()))
    ours, base = times["token_logprobs"] / args.steps, times["full width"] / args.steps
    print(f"self-critical log-prob pass, forward + backward: {rows} captions per step ({args.images} images x "
          f"{args.samples}), at most {_MAX_TOKENS} tokens, {len(tokenizer)}-token vocabulary, "
          f"{torch.get_num_threads()} torch threads, {args.steps} steps")
    print(f"{'pass':<16} | {'s / step':>8}")
    print("-" * 27)
    print(f"{'full width':<16} | {base:>8.3f}")
    print(f"{'token_logprobs':<16} | {ours:>8.3f}")
    print("-" * 27)
    print(f"speed-up {base / ours:.2f}x; largest |difference| of log-probs {worst:.1e} (at most {_ATOL})")
    return 0 if worst <= _ATOL else 1


if __name__ == "__main__":
    sys.exit(main())
