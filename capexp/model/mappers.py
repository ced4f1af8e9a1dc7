"""Mappers: image features (B, F) or (B, T, F) to k visual tokens (B, k, D) in the decoder's width, as
`gpt2_config.mapper` names them (`mlp`, `transformer`, `regions`), and the feature crops training pools."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MlpMapper", "crop_pool", "RegionMapper", "TransformerMapper", "build_mapper"]


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
