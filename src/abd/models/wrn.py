"""Wide Residual Networks (Zagoruyko & Komodakis 2016), in the ZSKT layout used by the ABD teachers.

State-dict naming follows the ZSKT code exactly (``conv1``, ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,
convShortcut}``, ``bn1``, ``fc``) so that the Shuffling Vaccine's "keys containing ``conv``" rule counts the
same layers as the reference (16 for WRN-16-2, 15 for WRN-16-1).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from abd.models.registry import register_model


class BasicBlock(nn.Module):
    """Pre-activation block BN-ReLU-conv3x3-BN-ReLU-conv3x3; a 1x1 ``convShortcut`` when the shape changes.

    As in the reference code, a block with a shortcut conv applies it to the *pre-activated* input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """A group of ``n`` BasicBlocks; only the first one changes width and stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen (Zagoruyko & Komodakis 2016), ZSKT variant: ReLU, bias-free convs.

    Args:
        depth: total depth, ``6n + 4`` (16 -> 2 blocks per group, 40 -> 6).
        widen: widen factor k; the groups have 16k, 32k and 64k channels.
        num_classes, in_channels, image_size: data shape (any size >= 8; the pool is adaptive).
        dropout: dropout probability inside each block (0 in all ABD experiments).

    ``forward`` returns logits; the attention-transfer activations are the outputs of ``feature_layers``
    (block1/2/3, before the final BN) captured with :func:`abd.models.hooks.capture_features`.
    """

    feature_layers = ("block1", "block2", "block3")

    def __init__(
        self,
        depth: int = 16,
        widen: int = 1,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, dropout)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, dropout)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.num_features = widths[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(torch.flatten(self.pool(out), 1))


@register_model("wrn16_1")
def wrn16_1(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kw) -> WideResNet:
    """WRN-16-1: 2 blocks per group, widths 16/32/64 (about 0.18M parameters; the ABD student)."""
    return WideResNet(16, 1, num_classes, in_channels, image_size, **kw)


@register_model("wrn16_2")
def wrn16_2(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kw) -> WideResNet:
    """WRN-16-2: 2 blocks per group, widths 32/64/128 (about 0.69M parameters; the ABD teacher)."""
    return WideResNet(16, 2, num_classes, in_channels, image_size, **kw)


@register_model("wrn40_2")
def wrn40_2(num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kw) -> WideResNet:
    """WRN-40-2: 6 blocks per group, widths 32/64/128 (about 2.2M parameters; clean-KD teacher)."""
    return WideResNet(40, 2, num_classes, in_channels, image_size, **kw)
