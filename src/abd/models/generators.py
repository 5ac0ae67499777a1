"""Generators for data-free KD: the ZSKT generator and the CMI-codebase ``Generator``/``LargeGenerator``.

All map z ~ N(0, I) of shape (N, z_dim) to images of shape (N, channels, image_size, image_size). They start
from an ``ceil(image_size / 4)`` map, upsample twice and centre-crop to ``image_size`` when it is not a
multiple of 4, so any size works (28 for MNIST, 32 for CIFAR-10/GTSRB).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from abd.registry import Registry

GENERATORS: Registry[Callable[..., nn.Module]] = Registry("generator")


class CenterCrop(nn.Module):
    """Crop the centre ``size`` x ``size`` window of an NCHW map (an identity when it already fits)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h == self.size and w == self.size:
            return x
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return x[..., top : top + self.size, left : left + self.size]


def upsampling_stack(c0: int, c1: int, c2: int, channels: int, image_size: int, bias: bool,
                     out: nn.Module) -> nn.Sequential:
    """BN(c0) -> Up x2 -> Conv3x3(c0 -> c1) -> BN -> LReLU(0.2) -> Up x2 -> crop -> Conv3x3(c1 -> c2) -> BN ->
    LReLU(0.2) -> Conv3x3(c2 -> channels) -> `out`: the body every registered generator shares."""
    return nn.Sequential(
        nn.BatchNorm2d(c0),
        nn.Upsample(scale_factor=2),
        nn.Conv2d(c0, c1, 3, stride=1, padding=1, bias=bias),
        nn.BatchNorm2d(c1),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Upsample(scale_factor=2),
        CenterCrop(image_size),
        nn.Conv2d(c1, c2, 3, stride=1, padding=1, bias=bias),
        nn.BatchNorm2d(c2),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(c2, channels, 3, stride=1, padding=1),
        out,
    )


class _Generator(nn.Module):
    """Shared parts: ``l1`` (z -> feature map), ``conv_blocks`` (map -> image), ``sample_z``, ``reinit``."""

    l1: nn.Linear
    conv_blocks: nn.Sequential

    def __init__(self, z_dim: int, channels: int, image_size: int, init_channels: int) -> None:
        super().__init__()
        self.z_dim, self.channels, self.image_size = z_dim, channels, image_size
        self.init_size = math.ceil(image_size / 4)
        self.init_channels = init_channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.l1(z).view(z.shape[0], self.init_channels, self.init_size, self.init_size)
        return self.conv_blocks(out)

    def sample_z(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """A batch z ~ N(0, I) of shape (batch_size, z_dim) on ``device`` (default: the generator's)."""
        if device is None:
            device = next(self.parameters()).device
        return torch.randn(batch_size, self.z_dim, device=device)

    @torch.no_grad()
    def reinit(self) -> None:
        """CMI's ``reset_model``: conv/linear weights N(0, 0.02), BN weights N(1, 0.02), all biases 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)


@GENERATORS.register("zskt")
class ZSKTGenerator(_Generator):
    """The ZSKT generator (Micaelli & Storkey 2019).

    Linear(z -> width x s/4 x s/4) -> BN -> Up x2 -> Conv3x3(width) -> BN -> LReLU(0.2) -> Up x2 ->
    Conv3x3(width/2) -> BN -> LReLU(0.2) -> Conv3x3(channels) -> BN(channels, affine). No tanh: the output
    is used directly as a normalized image. ``width`` = 128 in the paper; a smaller one suits CPU tests.
    """

    def __init__(self, z_dim: int = 100, channels: int = 3, image_size: int = 32, width: int = 128) -> None:
        super().__init__(z_dim, channels, image_size, width)
        self.l1 = nn.Linear(z_dim, width * self.init_size**2)
        self.conv_blocks = upsampling_stack(width, width, width // 2, channels, image_size, bias=True,
                                            out=nn.BatchNorm2d(channels, affine=True))


@GENERATORS.register("cmi")
class CMIGenerator(_Generator):
    """The CMI generator (Fang et al. 2021, "Contrastive Model Inversion").

    Linear(z -> 2w x s/4 x s/4) -> BN -> Up x2 -> Conv3x3(2w -> 2w, no bias) -> BN -> LReLU(0.2) -> Up x2 ->
    Conv3x3(2w -> w, no bias) -> BN -> LReLU(0.2) -> Conv3x3(w -> channels) -> Sigmoid; images in [0, 1]
    (normalize them before the classifiers). w = ``width`` (ngf, 64). CMI calls :meth:`reinit` before every
    synthesis round.
    """

    def __init__(self, z_dim: int = 256, channels: int = 3, image_size: int = 32, width: int = 64) -> None:
        super().__init__(z_dim, channels, image_size, width * 2)
        self.l1 = nn.Linear(z_dim, width * 2 * self.init_size**2)
        self.conv_blocks = upsampling_stack(width * 2, width * 2, width, channels, image_size, bias=False,
                                            out=nn.Sigmoid())


@GENERATORS.register("large")
class LargeGenerator(_Generator):
    """The CMI codebase's ``LargeGenerator`` (used there for ZSKT/DAFL/DFQ/DFAD).

    Linear(z -> 4w x s/4 x s/4) -> BN -> Up x2 -> Conv3x3(4w -> 2w, no bias) -> BN -> LReLU(0.2) -> Up x2 ->
    Conv3x3(2w -> w, no bias) -> BN -> LReLU(0.2) -> Conv3x3(w -> channels) -> Sigmoid; images in [0, 1].
    """

    def __init__(self, z_dim: int = 256, channels: int = 3, image_size: int = 32, width: int = 64) -> None:
        super().__init__(z_dim, channels, image_size, width * 4)
        self.l1 = nn.Linear(z_dim, width * 4 * self.init_size**2)
        self.conv_blocks = upsampling_stack(width * 4, width * 2, width, channels, image_size, bias=False,
                                            out=nn.Sigmoid())


def create_generator(name: str, **kwargs) -> nn.Module:
    """Build a registered generator (``"zskt"``, ``"cmi"``, ``"large"``) with keyword arguments such as
    ``z_dim``, ``channels``, ``image_size`` and ``width``."""
    return GENERATORS.get(name)(**kwargs)


def list_generators(pattern: str | None = None) -> list[str]:
    """Registered generator names."""
    return GENERATORS.names(pattern)
