"""Transforms in plain torch: uint8 NHWC -> normalized float NCHW, random crop, flip, resize, resized crop,
affine, colour jitter, grayscale and CutMix."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def to_float(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 NHWC images -> float NCHW in [0, 1]."""
    t = torch.as_tensor(x)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


class Normalizer:
    """Maps [0, 1] images to the normalized model-input space and back."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x.device) + self.mean.to(x.device)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of the normalized space, i.e. images 0 and 1."""
        return (0 - self.mean) / self.std, (1 - self.mean) / self.std


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad NCHW images by `padding` and crop back to size at a random offset per image."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dev = x.device
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    rows = (oy.view(n, 1) + torch.arange(h, device=dev).view(1, h)).view(n, 1, h, 1)
    cols = (ox.view(n, 1) + torch.arange(w, device=dev).view(1, w)).view(n, 1, 1, w)
    idx_n = torch.arange(n, device=dev).view(n, 1, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows, cols]  # n,1,h,w,c
    return out.squeeze(1).permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Flip each NCHW image horizontally with probability `p`."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of NCHW float images to size x size."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def augment_batch(
    x: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The standard train augmentation: random crop with padding (+ horizontal flip where valid)."""
    x = random_crop(x, padding, generator)
    return random_hflip(x, generator) if hflip else x


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches over in-memory tensors (seeded order when shuffling)."""
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def crop_theta(
    n: int, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
    aspect: float = 1.0, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Affine matrices (n, 2, 3), in ``affine_grid``'s normalized coordinates, of random crop boxes.

    Each box covers a fraction ``scale`` of the source area with width/height ratio in ``ratio`` (log-
    uniform), clipped to the source (no centre-crop fallback); ``aspect`` is the source's width / height.
    """
    area = _uniform(n, *scale, generator)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator)
    r = torch.exp(log_r) / aspect  # box w/h in units of the source's normalized width/height
    sw = torch.sqrt(area * r).clamp(max=1.0)
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (1 - sw) * (2 * torch.rand(n, generator=generator) - 1)
    cy = (1 - sh) * (2 * torch.rand(n, generator=generator) - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = sw, sh, cx, cy
    return theta


def affine_theta(
    n: int, degrees: float = 0.0, shear: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Inverse-map matrices (n, 2, 3) of random rotations in +/-``degrees`` and x-shears in +/-``shear``
    degrees about the image centre (torchvision's ``RandomAffine(degrees, shear=shear)``)."""
    a = torch.deg2rad(_uniform(n, -degrees, degrees, generator))
    s = torch.deg2rad(_uniform(n, -shear, shear, generator))
    # forward map M = R(a) @ Shx(s); the sampling grid needs M^-1 = Shx(-s) @ R(-a)
    cos, sin, t = torch.cos(a), torch.sin(a), torch.tan(s)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos + t * sin, sin - t * cos
    theta[:, 1, 0], theta[:, 1, 1] = -sin, cos
    return theta


def random_resized_crop(
    x: torch.Tensor, size: int, scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3), generator: torch.Generator | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """A random crop of each NCHW image (area fraction in ``scale``), resized to ``size`` x ``size``."""
    theta = crop_theta(len(x), scale, ratio, x.shape[-1] / x.shape[-2], generator).to(x)
    grid = F.affine_grid(theta, [len(x), x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def random_affine(
    x: torch.Tensor, degrees: float = 0.0, shear: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random rotation and x-shear of each NCHW image about its centre, filling with zeros."""
    theta = affine_theta(len(x), degrees, shear, generator).to(x)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """RGB NCHW images -> 1-channel luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def color_jitter(
    x: torch.Tensor, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
    hue: float = 0.1, p: float = 1.0, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """torchvision-style ColorJitter of [0, 1] NCHW images, applied to each image with probability ``p``
    (brightness, contrast, saturation in that order, then a hue rotation in YIQ space for RGB)."""
    n = len(x)

    def factor(amount: float) -> torch.Tensor:
        return _uniform(n, max(0.0, 1 - amount), 1 + amount, generator).to(x).view(n, 1, 1, 1)

    out = (x * factor(brightness)).clamp(0, 1)
    gray_mean = to_grayscale(out).mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - gray_mean) * factor(contrast) + gray_mean).clamp(0, 1)
    if x.shape[1] == 3:
        gray = to_grayscale(out)
        out = ((out - gray) * factor(saturation) + gray).clamp(0, 1)
        if hue > 0:
            ang = (2 * math.pi * _uniform(n, -hue, hue, generator)).to(x)
            yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                               dtype=x.dtype, device=x.device)
            c = torch.einsum("ij,njhw->nihw", yiq, out)
            cos, sin = torch.cos(ang).view(n, 1, 1), torch.sin(ang).view(n, 1, 1)
            i, q = c[:, 1] * cos - c[:, 2] * sin, c[:, 1] * sin + c[:, 2] * cos
            c = torch.stack([c[:, 0], i, q], 1)
            out = torch.einsum("ij,njhw->nihw", torch.linalg.inv(yiq), c).clamp(0, 1)
    keep = (torch.rand(n, generator=generator) >= p).to(x.device).view(n, 1, 1, 1)
    return torch.where(keep, x, out)


def cutmix(x: torch.Tensor, beta: float = 1.0, p: float = 1.0) -> torch.Tensor:
    """CutMix on inputs only (Yun et al. 2019): with probability ``p`` paste into every image a box of a
    shuffled partner; lambda ~ Beta(beta, beta) is the kept area, as in the reference implementation.
    Uses the global torch RNG."""
    if beta <= 0 or float(torch.rand(())) >= p:
        return x
    lam = float(torch.distributions.Beta(float(beta), float(beta)).sample())
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    cw, ch = int(w * cut), int(h * cut)
    cx, cy = int(torch.randint(w, ())), int(torch.randint(h, ()))
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    perm = torch.randperm(len(x)).to(x.device)
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
    return out


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): zero a ``size`` x ``size`` square at a random centre of each NCHW
    image (clipped at the borders); ``size`` <= 0 returns ``x`` unchanged."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=generator).to(x.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - cy
    cols = torch.arange(w, device=x.device).view(1, 1, w) - cx
    lo, hi = -(size // 2), size - size // 2  # [lo, hi) around the centre
    hole = (rows >= lo) & (rows < hi) & (cols >= lo) & (cols < hi)
    return x.masked_fill(hole.unsqueeze(1), 0.0)
