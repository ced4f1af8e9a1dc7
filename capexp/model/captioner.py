"""The ClipCap captioner: image features -> mapper -> k visual tokens -> causal LM decoder.

Read top to bottom in the order a batch flows: the mappers, then `ClipCap.prefix` and
`ClipCap.forward` (the loss on caption tokens only), then `build_model` (as a spec says), and
the checkpoint format: `model.safetensors` + `capexp.json` (`CheckpointMeta`), never pickle.
A run's checkpoint leaves out the decoder blocks it froze, as PEFT adapters do: `capexp.json`
names the base they come from and a SHA-256 of their values, checked when the checkpoint loads.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from capexp.errors import CapexpError
from capexp.tracking.names import CHECKPOINT_META, CHECKPOINT_WEIGHTS

if TYPE_CHECKING:
    from capexp.spec.schema import Spec

__all__ = [
    "ClipCap", "MlpMapper", "crop_pool", "RegionMapper", "TransformerMapper", "build_mapper", "freeze_blocks", "build_model",
    "CheckpointMeta", "frozen_base", "is_checkpoint", "save_checkpoint", "load_state",
]


class MlpMapper(nn.Module):
    """The seed's projection: Linear(feature_dim -> k * width) then Tanh, reshaped to k tokens.

    Grid features (B, T, F) are mean-pooled first: this mapper makes exactly k tokens.
    """

    def __init__(self, feature_dim: int, width: int, k: int) -> None:
        super().__init__()
        self.k, self.width = k, width
        self.proj = nn.Linear(feature_dim, k * width)
        self.act = nn.Tanh()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() == 3:
            features = features.mean(dim=1)  # (B, F)
        return self.act(self.proj(features)).view(-1, self.k, self.width)  # (B, k, D)


def crop_pool(features: torch.Tensor, min_share: float, gen: torch.Generator) -> torch.Tensor:
    """Each image's mean feature over a random window of its square grid: (B, T, F) -> (B, F), for the MLP mapper.

    A window's height and width are drawn from ceil(min_share * side) to side cells, then its place:
    training's crop augmentation, with no image encoded again (at test time the MLP mapper pools the whole grid).
    """
    b, t, _ = features.shape
    side = math.isqrt(t)
    low = max(1, math.ceil(min_share * side - 1e-9))
    height, width = (torch.randint(low, side + 1, (b,), generator=gen) for _ in range(2))
    top = (torch.rand(b, generator=gen) * (side - height + 1)).long()
    left = (torch.rand(b, generator=gen) * (side - width + 1)).long()
    cells = torch.arange(side)
    rows = (cells >= top[:, None]) & (cells < (top + height)[:, None])  # (B, side)
    cols = (cells >= left[:, None]) & (cells < (left + width)[:, None])  # (B, side)
    window = (rows[:, :, None] & cols[:, None, :]).reshape(b, t, 1).to(features.dtype)  # (B, T, 1)
    return (features * window).sum(dim=1) / window.sum(dim=1)


class RegionMapper(nn.Module):
    """The MLP mapper's k tokens from the whole image, then one token per cell of the grid average-pooled to
    `regions` x `regions` cells: a shared Linear -> Tanh plus a learned embedding of the cell's position.

    Needs grid features (B, T, F) of a square grid; makes k + regions ** 2 tokens.
    """

    def __init__(self, feature_dim: int, width: int, k: int, regions: int) -> None:
        super().__init__()
        self.regions = regions
        self.whole = MlpMapper(feature_dim, width, k)
        self.proj = nn.Linear(feature_dim, width)
        self.act = nn.Tanh()
        self.position = nn.Parameter(torch.randn(regions * regions, width) * 0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3 or math.isqrt(features.shape[1]) ** 2 != features.shape[1]:
            raise ValueError(f"the regions mapper needs grid features (B, T, F) with T a square; got {tuple(features.shape)}")
        b, t, f = features.shape
        side = math.isqrt(t)
        grid = features.transpose(1, 2).reshape(b, f, side, side)
        cells = nn.functional.adaptive_avg_pool2d(grid, self.regions).flatten(2).transpose(1, 2)  # (B, r*r, F)
        return torch.cat([self.whole(features), self.act(self.proj(cells)) + self.position], dim=1)  # (B, k + r*r, D)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: k learned queries attend over the projected image tokens.

    Pooled features (B, F) become one image token; grid features (B, T, F) give T image tokens.
    """

    def __init__(self, feature_dim: int, width: int, k: int, layers: int, heads: int = 8) -> None:
        super().__init__()
        heads = next(h for h in (heads, 4, 2, 1) if width % h == 0)
        self.k = k
        self.proj = nn.Linear(feature_dim, width)
        self.queries = nn.Parameter(torch.randn(k, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() == 2:
            features = features.unsqueeze(1)  # (B, 1, F)
        x = self.proj(features)  # (B, T, D)
        queries = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, k, D)
        out = self.encoder(torch.cat([x, queries], dim=1))  # (B, T + k, D)
        return out[:, -self.k :]  # (B, k, D)


def build_mapper(kind: str, feature_dim: int, width: int, k: int, layers: int = 4, regions: int = 2) -> nn.Module:
    """The mapper named by `gpt2_config.mapper`."""
    if kind == "mlp":
        return MlpMapper(feature_dim, width, k)
    if kind == "transformer":
        return TransformerMapper(feature_dim, width, k, layers)
    if kind == "regions":
        return RegionMapper(feature_dim, width, k, regions)
    raise ValueError(f"unknown mapper {kind!r}; use 'mlp', 'transformer' or 'regions'")


class ClipCap(nn.Module):
    """A mapper feeding k visual tokens to a causal language model."""

    def __init__(self, decoder: nn.Module, mapper: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.mapper = mapper

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.get_input_embeddings()(input_ids)  # (B, L, D)

    def prefix(self, features: torch.Tensor) -> torch.Tensor:
        """Visual tokens for a batch of image features."""
        return self.mapper(features)  # (B, k, D)

    def _caption_states(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Decoder states (n, D) at the n positions that predict the caption tokens where `attention_mask` is 1,
        in row-major order (as `input_ids[attention_mask.bool()]`).

        Captions are right-padded, so columns past the longest caption are cut before the decoder runs.
        """
        width = int(attention_mask.sum(dim=1).max())
        input_ids, attention_mask = input_ids[:, :width], attention_mask[:, :width]
        tokens = self.embed_tokens(input_ids)  # (B, L, D)
        embeds = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)  # (B, k+L, D)
        mask = torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1)  # (B, k+L)
        hidden = self.decoder.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (B, k+L, D)
        k = prefix.shape[1]
        return hidden[:, k - 1 : -1][attention_mask.bool()]  # position k+i-1 predicts caption token i

    def forward(self, features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy over caption tokens only: prefix and padding are masked out.

        `input_ids` (B, L) hold the caption followed by EOS, right-padded; `attention_mask` (B, L)
        is 1 on caption and EOS tokens.
        """
        states = self._caption_states(self.prefix(features), input_ids, attention_mask)  # (n, D)
        logits = self.decoder.get_output_embeddings()(states)  # (n, V): the LM head runs on caption and EOS positions only
        return nn.functional.cross_entropy(logits.float(), input_ids[attention_mask.bool()], label_smoothing=label_smoothing)

    def token_logprobs(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """log p (B, L) of each caption token given the visual tokens `prefix` (B, k, D) and the tokens
        before it; 0 where `attention_mask` is 0 (right padding)."""
        keep = attention_mask.bool()
        logits = self.decoder.get_output_embeddings()(self._caption_states(prefix, input_ids, attention_mask)).float()
        picked = logits.gather(-1, input_ids[keep].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)  # (n,)
        return torch.zeros(keep.shape, dtype=picked.dtype, device=picked.device).masked_scatter(keep, picked)


def freeze_blocks(blocks: nn.ModuleList, n: int | None) -> int:
    """Freeze the first `n` decoder blocks (None or 0: all trainable). Returns how many were frozen."""
    if not n:
        return 0
    if n > len(blocks):
        raise ValueError(f"n_layers_to_freeze={n} but the decoder has only {len(blocks)} blocks")
    for block in blocks[:n]:
        block.requires_grad_(False)
    return n


def build_model(spec: Spec, decoder, blocks: nn.ModuleList, feature_dim: int) -> ClipCap:
    """Mapper + decoder as the spec says, with the first `n_layers_to_freeze` blocks frozen."""
    cfg = spec.gpt2_config
    width = decoder.get_input_embeddings().embedding_dim
    mapper = build_mapper(cfg.mapper, feature_dim, width, cfg.visual_tokens_length, cfg.mapper_layers, cfg.mapper_regions)
    freeze_blocks(blocks, cfg.n_layers_to_freeze)
    return ClipCap(decoder, mapper)


# ---------------------------------------------------------------------------- checkpoints
@dataclass
class CheckpointMeta:
    """`capexp.json`: what rebuilds a checkpoint's model and tells checkpoints apart."""

    capexp_version: str | None  # None in a file that does not say
    spec: Spec  # the run's spec
    feature_dim: int | None  # the encoder's D when trained
    encoder_cache_id: str | None  # the encoder card's cache_id when trained
    vocabulary: list[int] | None  # kept token ids (`gpt2_config.vocabulary: train`), else None
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    frozen: dict[str, Any] | None = None  # `frozen_base`: the weights left out, None when every weight is in

    def to_json(self) -> dict[str, Any]:
        return {"capexp_version": self.capexp_version, "spec": self.spec.model_dump(mode="json"), "feature_dim": self.feature_dim,
                "encoder_cache_id": self.encoder_cache_id, "vocabulary": self.vocabulary,
                "epoch": self.epoch, "metrics": self.metrics, "frozen": self.frozen}

    @classmethod
    def read(cls, folder: Path) -> CheckpointMeta:
        from capexp.spec.schema import Spec

        data = json.loads((folder / CHECKPOINT_META).read_text())
        return cls(data.get("capexp_version"), Spec.model_validate(data["spec"]), data.get("feature_dim"),
                   data.get("encoder_cache_id"), data.get("vocabulary"), data.get("epoch"), data.get("metrics") or {},
                   data.get("frozen"))


def is_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds a checkpoint (weights and `capexp.json`)."""
    return (folder / CHECKPOINT_META).is_file() and (folder / CHECKPOINT_WEIGHTS).is_file()


def _frozen_keys(model: nn.Module) -> set[str]:
    """State-dict keys of frozen parameters (every alias of a tied one)."""
    frozen = {p.data_ptr() for p in model.parameters() if not p.requires_grad}
    return {k for k, v in model.state_dict().items() if v.data_ptr() in frozen}


def _digest(model: nn.Module) -> str:
    """SHA-256 of the frozen parameters' names, dtypes, shapes and values."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            t = p.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def frozen_base(model: nn.Module, base: str) -> dict[str, Any] | None:
    """What a trained-only checkpoint of `model` records about the frozen weights it leaves out:
    `base` (the decoder they come from, e.g. the spec's `gpt2_config.model`), how many tensors, and
    their SHA-256. None when nothing is frozen (the checkpoint then holds every weight)."""
    keys = _frozen_keys(model)
    return {"base": base, "tensors": len(keys), "sha256": _digest(model)} if keys else None


def save_checkpoint(model: ClipCap, folder: Path, meta: CheckpointMeta | dict[str, Any],
                    frozen: dict[str, Any] | None = None) -> Path:
    """Write the model as `model.safetensors` + `capexp.json` (never pickle). Returns the folder.

    With `frozen` (from `frozen_base`), frozen parameters are left out and `capexp.json` records
    them; without it, every weight is written (a self-contained checkpoint).
    """
    from safetensors.torch import save_file, save_model

    folder.mkdir(parents=True, exist_ok=True)
    data = meta.to_json() if isinstance(meta, CheckpointMeta) else dict(meta)
    if frozen is not None or "frozen" in data:
        data["frozen"] = frozen
    if frozen is None:
        save_model(model, str(folder / CHECKPOINT_WEIGHTS))
    else:
        skip, seen, tensors = _frozen_keys(model), set(), {}
        for key, value in model.state_dict().items():
            if key not in skip and value.data_ptr() not in seen:  # a tied tensor once, under its first name
                seen.add(value.data_ptr())
                tensors[key] = value.contiguous()
        save_file(tensors, str(folder / CHECKPOINT_WEIGHTS))
    (folder / CHECKPOINT_META).write_text(json.dumps(data, indent=2, default=str))
    return folder


def load_state(model: ClipCap, folder: Path) -> dict[str, Any]:
    """Load weights saved by `save_checkpoint` into `model` (built as the checkpoint's spec says,
    frozen blocks included); returns the saved metadata.

    A trained-only checkpoint takes its frozen weights from `model` as built: they must be the
    ones it trained with (same SHA-256), else this is a CapexpError saying so.
    """
    from safetensors.torch import load_model

    data = json.loads((folder / CHECKPOINT_META).read_text())
    frozen = data.get("frozen")
    if not frozen:
        load_model(model, str(folder / CHECKPOINT_WEIGHTS))
        return data
    if _digest(model) != frozen["sha256"]:
        raise CapexpError(
            f"{folder}: this checkpoint holds only the trained weights; its {frozen['tensors']} frozen tensors come "
            f"from the base decoder {frozen['base']!r}, but the {frozen['base']!r} loaded here has other values. "
            f"Load it where {frozen['base']!r} is the one it trained on (the same preset package version, hub "
            f"commit or local folder), or use a model `capexp register` made (it holds every weight)."
        )
    missing, unexpected = load_model(model, str(folder / CHECKPOINT_WEIGHTS), strict=False)
    absent = set(missing) - _frozen_keys(model)
    if absent or unexpected:
        raise CapexpError(f"{folder}: the weights do not fit the model its capexp.json describes "
                          f"(missing {sorted(absent)[:3]}, unexpected {sorted(unexpected)[:3]}); the checkpoint is damaged.")
    return data
