"""VGG-11/16 with BatchNorm (Simonyan & Zisserman 2015), CIFAR style: one linear classifier."""

from __future__ import annotations

import torch
import torch.nn as nn

from abd.models.registry import register_model

# Channels of the 3x3 convs in each of the five stages; every stage ends with a 2x2 max-pool.
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
}


class VGG(nn.Module):
    """VGG with BatchNorm for small images (Simonyan & Zisserman 2015).

    Each stage ``stage{i}`` is conv3x3-BN-ReLU repeated; ``pool{i}`` is a 2x2 max-pool, or an identity when
    the map is already smaller than 2x2 (so 8x8 and 28x28 inputs work). An adaptive average pool to 1x1 and
    a single ``fc`` layer follow. ``feature_layers`` are the (pre-pool) outputs of stages 1-4, at the same
    resolutions as the ResNet stages.
    """

    feature_layers = ("stage1", "stage2", "stage3", "stage4")

    def __init__(
        self,
        cfg: tuple[tuple[int, ...], ...],
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        c, size = in_channels, image_size
        for i, widths in enumerate(cfg, start=1):
            layers: list[nn.Module] = []
            for w in widths:
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True)]
                c = w
            self.add_module(f"stage{i}", nn.Sequential(*layers))
            self.add_module(f"pool{i}", nn.MaxPool2d(2) if size >= 2 else nn.Identity())
            size = size // 2 if size >= 2 else size
        self.num_stages = len(cfg)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"pool{i}")(getattr(self, f"stage{i}")(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> VGG:
    """VGG-11 with BatchNorm, CIFAR style (about 9.2M parameters)."""
    return VGG(CONFIGS["vgg11"], num_classes, in_channels, image_size)


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> VGG:
    """VGG-16 with BatchNorm, CIFAR style (about 14.7M parameters)."""
    return VGG(CONFIGS["vgg16"], num_classes, in_channels, image_size)
