"""The ClipCap model: loss on caption tokens only, mappers, freezing, safetensors checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from capexp.model.captioner import ClipCap, freeze_blocks
from capexp.model.checkpoint import load_state, save_checkpoint
from capexp.model.mappers import build_mapper, crop_pool


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=3, n_head=2))


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
def test_loss_ignores_padding_and_matches_full_logits(mapper: str) -> None:
    decoder = _gpt2()
    model = ClipCap(decoder, build_mapper(mapper, 16, 32, k=3, layers=1)).eval()
    feats = torch.randn(2, 16)
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    loss = model(feats, ids, mask)
    other_pad = ids.masked_fill(mask == 0, 42)  # padding tokens must not matter
    assert torch.allclose(loss, model(feats, other_pad, mask))
    # reference: full logits, labels -100 on prefix and padding
    with torch.no_grad():
        embeds = torch.cat([model.prefix(feats), model.embed_tokens(ids)], dim=1)
        full_mask = torch.cat([torch.ones(2, 3, dtype=mask.dtype), mask], dim=1)
        logits = decoder(inputs_embeds=embeds, attention_mask=full_mask).logits[:, 3:]
        labels = torch.cat([ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100), torch.full((2, 1), -100)], dim=1)
        first = torch.nn.functional.cross_entropy(decoder(inputs_embeds=embeds, attention_mask=full_mask).logits[:, 2], ids[:, 0], reduction="sum")
        rest = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), labels.reshape(-1), ignore_index=-100, reduction="sum")
    assert torch.allclose(loss, (first + rest) / mask.sum(), atol=1e-5)


def test_token_logprobs_of_a_padded_batch_equal_each_caption_decoded_alone() -> None:
    decoder = _gpt2()
    model = ClipCap(decoder, build_mapper("mlp", 16, 32, k=3)).eval()
    feats = torch.randn(3, 16)
    ids = torch.tensor([[5, 6, 7, 0, 0, 0], [8, 9, 10, 11, 0, 0], [12, 13, 0, 0, 0, 0]])  # last 2 columns: padding only
    mask = (torch.arange(6) < torch.tensor([[3], [4], [2]])).long()
    got = model.token_logprobs(model.prefix(feats), ids, mask)
    assert got.shape == ids.shape and bool((got[mask == 0] == 0).all())
    with torch.no_grad():
        for row, n in enumerate(mask.sum(dim=1).tolist()):
            embeds = torch.cat([model.prefix(feats[row : row + 1]), model.embed_tokens(ids[row : row + 1, :n])], dim=1)
            logp = decoder(inputs_embeds=embeds).logits[0, 2 : 2 + n].log_softmax(dim=-1)  # position 2 predicts token 0
            assert torch.allclose(got[row, :n], logp.gather(1, ids[row, :n, None]).squeeze(1), atol=1e-5)


def test_grid_features_work_with_both_mappers() -> None:
    grid = torch.randn(2, 9, 16)  # (B, T, F)
    for kind in ("mlp", "transformer"):
        assert build_mapper(kind, 16, 32, k=4, layers=1)(grid).shape == (2, 4, 32)


def test_regions_mapper_gives_each_cell_a_token_from_its_own_part_of_the_grid() -> None:
    torch.manual_seed(0)
    mapper = build_mapper("regions", 8, 16, k=3, regions=2)
    grid = torch.randn(1, 16, 8)  # a 4 x 4 grid
    changed = grid.clone()
    changed[0, [0, 1, 4, 5]] += 1.0  # the top-left 2 x 2 cells only
    before, after = mapper(grid), mapper(changed)
    assert before.shape == (1, 3 + 4, 16)
    moved = (before - after).abs().amax(dim=-1)[0]  # per token
    assert bool((moved[:3] > 0).all()) and moved[3] > 0  # the whole-image tokens and the top-left cell's token
    assert bool((moved[4:] == 0).all())  # the other three cells' tokens do not move
    with pytest.raises(ValueError, match="needs grid features"):
        mapper(torch.randn(1, 8))


def test_feature_crops_pool_a_random_window_of_at_least_the_share_of_each_side() -> None:
    gen = torch.Generator().manual_seed(0)
    grid = torch.eye(49).expand(1000, -1, -1)  # cell i of the 7 x 7 grid is feature i: a pooled row shows its window
    pooled = crop_pool(grid, 0.7, gen)
    windows = set()
    for row in pooled:
        cells = (row > 0).view(7, 7)
        rows, cols = cells.any(dim=1).nonzero().flatten(), cells.any(dim=0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert bool(cells[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()) and int(cells.sum()) == height * width
        assert 5 <= height <= 7 and 5 <= width <= 7  # ceil(0.7 * 7) = 5 cells a side at least
        assert torch.allclose(row[row > 0], torch.tensor(1.0 / (height * width)))  # the window's mean
        windows.add((int(rows[0]), int(cols[0]), height, width))
    assert len(windows) == 36  # every window: (3 + 2 + 1) ** 2 sizes and places
    features = torch.randn(3, 49, 8)
    assert torch.allclose(crop_pool(features, 1.0, gen), features.mean(dim=1))  # share 1: the whole grid, as at test time


@pytest.mark.parametrize("make, blocks", [(_gpt2, lambda m: m.transformer.h), (_llama, lambda m: m.model.layers)])
def test_freeze_first_blocks_for_gpt2_and_llama(make, blocks) -> None:
    decoder = make()
    assert freeze_blocks(blocks(decoder), 2) == 2
    assert [all(not p.requires_grad for p in b.parameters()) for b in blocks(decoder)] == [True, True, False]
    model = ClipCap(decoder, build_mapper("mlp", 16, 32, k=2))
    loss = model(torch.randn(2, 16), torch.tensor([[1, 2], [3, 4]]), torch.ones(2, 2, dtype=torch.long))
    loss.backward()
    assert blocks(decoder)[0].parameters().__next__().grad is None
    assert model.mapper.proj.weight.grad is not None


def test_checkpoint_roundtrip_is_safetensors_and_json(tmp_path: Path) -> None:
    model = ClipCap(_gpt2(), build_mapper("mlp", 16, 32, k=2))
    save_checkpoint(model, tmp_path / "ckpt", {"epoch": 3})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["capexp.json", "model.safetensors"]
    fresh = ClipCap(_gpt2(), build_mapper("mlp", 16, 32, k=2))
    torch.nn.init.zeros_(fresh.mapper.proj.weight)
    assert load_state(fresh, tmp_path / "ckpt") == {"epoch": 3}
    assert torch.equal(fresh.mapper.proj.weight, model.mapper.proj.weight)


def test_a_checkpoint_leaves_out_frozen_blocks_and_checks_its_base_on_load(tmp_path: Path) -> None:
    from safetensors import safe_open

    from capexp.errors import CapexpError
    from capexp.model.checkpoint import frozen_base

    def frozen_model() -> ClipCap:
        decoder = _gpt2()
        freeze_blocks(decoder.transformer.h, 2)
        return ClipCap(decoder, build_mapper("mlp", 16, 32, k=2))

    model = frozen_model()
    torch.nn.init.normal_(model.mapper.proj.weight)  # "trained" weights, unlike a fresh model's
    with torch.no_grad():
        model.decoder.transformer.h[2].mlp.c_fc.weight.add_(1.0)
    save_checkpoint(model, tmp_path / "trained", {"epoch": 1}, frozen_base(model, "gpt2-test"))
    save_checkpoint(model, tmp_path / "full", {"epoch": 1})
    with safe_open(tmp_path / "trained" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith(("decoder.transformer.h.0.", "decoder.transformer.h.1.")) for k in keys)
    assert "decoder.transformer.h.2.mlp.c_fc.weight" in keys and "mapper.proj.weight" in keys
    trained, full = ((tmp_path / d / "model.safetensors").stat().st_size for d in ("trained", "full"))
    assert trained < full

    fresh = frozen_model()  # the same base: frozen blocks from it, the rest from the file
    load_state(fresh, tmp_path / "trained")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))

    other = frozen_model()
    with torch.no_grad():
        other.decoder.transformer.h[0].attn.c_attn.weight.mul_(2)  # another base decoder
    with pytest.raises(CapexpError, match="only the trained weights.*'gpt2-test'"):
        load_state(other, tmp_path / "trained")
    load_state(other, tmp_path / "full")  # a full checkpoint needs no base
    assert torch.equal(other.decoder.transformer.h[0].attn.c_attn.weight, model.decoder.transformer.h[0].attn.c_attn.weight)
