"""LeNet-5 and LeNet-5-half (the DAFL paper's MNIST teacher/student pair), with BatchNorm."""

from __future__ import annotations

import torch
import torch.nn as nn

from abd.models.registry import register_model


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with BatchNorm after each conv.

    conv5x5(c1) -> BN -> ReLU -> maxpool2 -> conv5x5(c2) -> BN -> ReLU -> maxpool2 -> fc(f1) -> fc(f2) -> fc.
    ``feature_layers`` names the stage outputs used for attention transfer. BatchNorm lets BN-statistics
    losses (DeepInversion, CMI) be driven by this teacher.
    """

    feature_layers = ("stage1", "stage2")

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        width: tuple[int, int, int, int] = (6, 16, 120, 84),
    ) -> None:
        super().__init__()
        c1, c2, f1, f2 = width
        self.stage1 = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.BatchNorm2d(c1), nn.ReLU(inplace=True)
        )
        self.pool1 = nn.MaxPool2d(2)
        self.stage2 = nn.Sequential(nn.Conv2d(c1, c2, 5, padding=2 if image_size < 16 else 0),
                                    nn.BatchNorm2d(c2), nn.ReLU(inplace=True))
        self.pool2 = nn.MaxPool2d(2)
        with torch.no_grad():
            n_flat = self._features(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.fc1 = nn.Linear(n_flat, f1)
        self.fc2 = nn.Linear(f1, f2)
        self.fc = nn.Linear(f2, num_classes)
        self.relu = nn.ReLU(inplace=True)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.stage1(x))
        x = self.pool2(self.stage2(x))
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.fc1(self._features(x)))
        h = self.relu(self.fc2(h))
        return self.fc(h)


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> LeNet5:
    """LeNet-5 with BN: conv 6/16, fc 120/84 (about 62k parameters)."""
    return LeNet5(num_classes, in_channels, image_size, width=(6, 16, 120, 84))


@register_model("lenet5_half")
def lenet5_half(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> LeNet5:
    """LeNet-5-half with BN: conv 3/8, fc 60/42 (the DAFL student)."""
    return LeNet5(num_classes, in_channels, image_size, width=(3, 8, 60, 42))
