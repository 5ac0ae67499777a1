"""The paper's trigger suite: blend-type and additive triggers, registered by name.

Reference coordinates are for 32x32 RGB images. Other sizes are handled by ``Geometry``: for 28..32 px the
reference pixel sizes are kept, anchored to the nearest border (e.g. badnet_sq stays a 4x4 block one pixel
from the bottom-right corner); otherwise sizes and offsets scale with ``image_size / 32`` (at least 1-2 px).
Single-channel images get the luminance of coloured patterns. Patterns the reference loads from PNG files
are generated procedurally from ``np.random.default_rng(seed + seed_offset)``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from abd.attacks.base import Trigger, register_trigger

REF_SIZE = 32
LUMA = np.array([0.299, 0.587, 0.114])
_CHUNK = 1024  # images processed at once in float64

# Pattern P of badnet_grid / cl (rows top to bottom).
GRID_P = np.array([[0, 0, 255], [0, 255, 0], [255, 0, 255]], dtype=np.float64)

# Measured trojan_3x3.png patch (rows 25-27, cols 25-27), channels R, G, B.
TROJAN_3X3_RGB = np.stack(
    [
        [[207, 175, 29], [79, 137, 248], [131, 6, 246]],
        [[131, 243, 232], [8, 0, 113], [40, 145, 250]],
        [[181, 120, 179], [126, 32, 146], [4, 61, 246]],
    ],
    axis=-1,
).astype(np.float64)

# Measured l0_inv.png + mask.npy: mask on row 31, cols 23-31; trigger values for cols 23-31 (col 23 is 0).
L0_INV_RGB = np.stack(
    [
        [0, 255, 0, 255, 255, 0, 0, 255, 255],
        [0, 0, 0, 255, 255, 255, 255, 0, 255],
        [0, 255, 255, 0, 255, 255, 255, 0, 255],
    ],
    axis=-1,
)[None].astype(np.float64)


def _round(x: float) -> int:
    """Round half up (Python's ``round`` rounds half to even)."""
    return int(np.floor(x + 0.5))


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """(..., 3) RGB pattern -> (..., channels): unchanged for 3 channels, luminance for 1."""
    if channels == 3:
        return rgb
    return (rgb @ LUMA)[..., None]


def resize_nearest(patch: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, c) patch to (height, width, c)."""
    h, w = patch.shape[:2]
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
    return patch[rows][:, cols]


class Geometry:
    """Maps spans of the 32-px reference axis to a ``size``-px axis."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.factor = 1.0 if 28 <= size <= REF_SIZE else size / REF_SIZE

    def span(self, start: int, length: int) -> slice:
        """Scaled reference span ``[start, start + length)``, anchored to its nearer border."""
        end_offset = REF_SIZE - start - length
        n = min(self.size, max(min(2, length), _round(length * self.factor)))
        if end_offset < start:  # anchored to the bottom / right border
            off = _round(end_offset * self.factor)
            off = max(1, off) if end_offset > 0 else off
            first = max(0, self.size - off - n)
        else:
            first = min(_round(start * self.factor), self.size - n)
        return slice(first, first + n)

    def box(self, row: int, col: int, height: int, width: int) -> tuple[slice, slice]:
        """Scaled reference box with top-left ``(row, col)``."""
        return self.span(row, height), self.span(col, width)

    def grid(self) -> np.ndarray:
        """Pattern P: 3x3 for images of 16 px or more, its lower-right 2x2 checker below that."""
        return GRID_P if self.size >= 16 else GRID_P[1:, 1:]


def check_images(trigger: Trigger, images: np.ndarray) -> None:
    """Raise ValueError unless ``images`` is uint8 (N, H, W, C) matching the trigger's size and channels."""
    expected = (trigger.image_size, trigger.image_size, trigger.channels)
    if not isinstance(images, np.ndarray):
        raise ValueError(f"{trigger.name} expects a numpy uint8 array (N, {', '.join(map(str, expected))}), got "
                         f"{type(images).__name__}; convert a tensor with .numpy()")
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
        raise ValueError(
            f"{trigger.name} expects uint8 images of shape (N, {', '.join(map(str, expected))}), "
            f"got {images.dtype} {images.shape}"
        )


def map_float(images: np.ndarray, trigger: Trigger, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``fn`` to float64 chunks of ``images``; clip to [0, 255], round and cast back to uint8."""
    check_images(trigger, images)
    out = np.empty_like(images)
    for i in range(0, len(images), _CHUNK):
        y = fn(images[i : i + _CHUNK].astype(np.float64))
        out[i : i + _CHUNK] = np.rint(np.clip(y, 0.0, 255.0)).astype(np.uint8)
    return out


class PatternTrigger(Trigger):
    """A trigger defined by fixed float (H, W, C) arrays built once from the geometry and the seed."""

    patch: ClassVar[bool] = False  # True: changes only a small fixed region (see footprint)
    seed_offset: ClassVar[int] = 0

    def __init__(self, image_size: int = 32, channels: int = 3, seed: int = 0) -> None:
        super().__init__(image_size, channels, seed)
        self.geometry = Geometry(image_size)
        self.rng = np.random.default_rng(seed + self.seed_offset)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)

    def canvas(self, region: tuple[slice, slice], values: np.ndarray) -> np.ndarray:
        """Zero (H, W, C) array with ``values`` ((h, w) or (h, w, 3|C), any size) resized into ``region``."""
        out = np.zeros(self.shape)
        h, w = (len(range(*r.indices(self.image_size))) for r in region)
        v = values[..., None] if values.ndim == 2 else values
        v = to_channels(v, self.channels) if v.shape[-1] == 3 else v
        out[region] = resize_nearest(v, h, w)
        return out

    def _region_of(self, arr: np.ndarray) -> np.ndarray | None:
        return (arr != 0).any(axis=-1) if self.patch else None

    def __repr__(self) -> str:
        cls = type(self).__name__
        return f"{cls}(image_size={self.image_size}, channels={self.channels}, seed={self.seed})"


class BlendTrigger(PatternTrigger):
    """BackdoorBox's base trigger: x' = (1 - w) * x + w * pattern, pattern in [0, 255], w in [0, 1]."""

    def __init__(self, image_size: int = 32, channels: int = 3, seed: int = 0) -> None:
        super().__init__(image_size, channels, seed)
        pattern, weight = self.build()
        self.pattern = np.broadcast_to(pattern, self.shape).astype(np.float64)
        self.weight = np.broadcast_to(weight, self.shape).astype(np.float64)

    @abstractmethod
    def build(self) -> tuple[np.ndarray, np.ndarray]:
        """(pattern, weight), each broadcastable to (H, W, C)."""

    def apply(self, images: np.ndarray) -> np.ndarray:
        return map_float(images, self, lambda x: (1.0 - self.weight) * x + self.weight * self.pattern)

    def footprint(self) -> np.ndarray | None:
        return self._region_of(self.weight)


class AdditiveTrigger(PatternTrigger):
    """Additive trigger: x' = clip(x + delta), delta a fixed (H, W, C) array in [0, 255]."""

    def __init__(self, image_size: int = 32, channels: int = 3, seed: int = 0) -> None:
        super().__init__(image_size, channels, seed)
        self.delta = np.broadcast_to(self.build(), self.shape).astype(np.float64)

    @abstractmethod
    def build(self) -> np.ndarray:
        """The additive pattern delta, broadcastable to (H, W, C)."""

    def apply(self, images: np.ndarray) -> np.ndarray:
        return map_float(images, self, lambda x: x + self.delta)

    def footprint(self) -> np.ndarray | None:
        return self._region_of(self.delta)


def stamp(
    trigger: PatternTrigger, regions: list[tuple[slice, slice]], values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(pattern, weight) that overwrite each region with ``values`` (w = 1 inside, 0 outside)."""
    pattern, weight = np.zeros(trigger.shape), np.zeros(trigger.shape)
    for region in regions:
        pattern += trigger.canvas(region, values)
        weight[region] = 1.0
    return pattern, weight


# ---------------------------------------------------------------------------------------------- blend-type


@register_trigger("badnet_grid")
class BadNetGrid(BlendTrigger):
    """BadNets grid (Gu et al. 2017): the 3x3 black/white pattern P in the bottom-right corner.

    "BadNets: identifying vulnerabilities in the machine learning model supply chain". P goes to
    rows/cols 29-31 at 32 px, the same value in all channels.
    """

    name = "badnet_grid"
    patch = True

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.geometry.grid()
        region = (slice(self.image_size - len(p), None),) * 2
        return stamp(self, [region], p)


@register_trigger("badnet_sq")
class BadNetSquare(BlendTrigger):
    """BadNets white square (Gu et al. 2017): rows/cols 27-30 set to 255, one pixel from the corner."""

    name = "badnet_sq"
    patch = True

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        region = self.geometry.box(27, 27, 4, 4)
        return stamp(self, [region], np.full((1, 1), 255.0))


@register_trigger("blend")
class Blend(BlendTrigger):
    """Blended injection (Chen et al. 2017): x' = 0.8 x + 0.2 K with a fixed uniform-noise image K.

    "Targeted backdoor attacks on deep learning systems using data poisoning". K stands in for the
    reference's Hello-Kitty image; ``alpha`` is its blend weight.
    """

    name = "blend"
    alpha: ClassVar[float] = 0.2
    seed_offset = 1_001

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        k = self.rng.integers(0, 256, self.shape).astype(np.float64)
        return k, np.full(self.shape, self.alpha)


@register_trigger("sig")
class SIG(BlendTrigger):
    """SIG clean-label attack (Barni et al. 2019): vertical stripes blended in at alpha 0.2.

    "A new backdoor attack in CNNs by training set corruption without label poisoning". Square-wave
    column stripes S(i, j) = 255 if (j mod period) >= period / 2 else 0, constant down each column,
    blended at ``alpha`` = 0.2. The period is 8 px at 28-32 px and scales down (at least 2) for small
    images so that the stripes stay a texture rather than a brightness ramp.

    Teacher defaults (measured on mnist5k/lenet5, see the README): poisoning the whole target class
    teaches "stripes = target" and the teacher fails on clean target images (target-class ACC 45 %), so
    ``default_poison_rate`` 0.09 leaves about a tenth of a balanced 10-class target class clean; a
    Cutout of half the image side (``default_cutout``) hides part of each poisoned digit now and then, so
    that the label must be carried by the stripes (without it ASR varies from 24 % to 82 % over seeds).
    """

    name = "sig"
    clean_label = True
    default_poison_rate = 0.09
    default_cutout = 0.5
    alpha: ClassVar[float] = 0.2

    @property
    def period(self) -> int:
        return max(2, 2 * _round(4 * self.geometry.factor))

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        cols = np.arange(self.image_size) % self.period >= self.period // 2
        s = np.broadcast_to(np.where(cols, 255.0, 0.0)[None, :, None], self.shape)
        return s, np.full(self.shape, self.alpha)


@register_trigger("l0_inv")
class L0Inverse(BlendTrigger):
    """Sparse (l0) reverse-engineered trigger (Neural Cleanse, Wang et al. 2019): a bottom-right strip.

    As used by Trap-and-Replace (Wang et al. 2022). x' = x * (1 - M) + t with the measured mask M
    (row 31, cols 23-31) and values t (col 23 black).
    """

    name = "l0_inv"
    patch = True

    def build(self) -> tuple[np.ndarray, np.ndarray]:
        region = self.geometry.box(31, 23, 1, 9)
        return stamp(self, [region], L0_INV_RGB)


# ---------------------------------------------------------------------------------------------- additive


@register_trigger("trojan_3x3")
class Trojan3x3(AdditiveTrigger):
    """Trojaning attack 3x3 patch (Liu et al., NDSS 2018): measured colours added at rows/cols 25-27.

    "Trojaning attack on neural networks"; the values are those of the reference's trojan_3x3.png.
    """

    name = "trojan_3x3"
    patch = True

    def build(self) -> np.ndarray:
        return self.canvas(self.geometry.box(25, 25, 3, 3), TROJAN_3X3_RGB)


@register_trigger("trojan_8x8")
class Trojan8x8(AdditiveTrigger):
    """Trojaning attack 8x8 patch (Liu et al., NDSS 2018): random saturated colours added at 21-28.

    A fixed random 8x8 patch of mostly {0, 255} colours at rows/cols 21-28, added to the image.
    """

    name = "trojan_8x8"
    patch = True
    seed_offset = 3_003
    mid_fraction: ClassVar[float] = 0.2  # share of entries with a uniform value instead of 0/255

    def build(self) -> np.ndarray:
        patch = self.rng.choice([0.0, 255.0], size=(8, 8, 3))
        mid = self.rng.random((8, 8, 3)) < self.mid_fraction
        patch[mid] = self.rng.integers(0, 256, int(mid.sum()))
        return self.canvas(self.geometry.box(21, 21, 8, 8), patch)


@register_trigger("trojan_wm")
class TrojanWatermark(AdditiveTrigger):
    """Trojaning attack watermark (Liu et al., NDSS 2018): a sparse coloured ring and diagonal, added.

    A ring (radius ~5 px around (19, 19)) plus a dotted anti-diagonal streak from the bottom-left to the
    top-right corner, with fixed random saturated colours. Scaled with the image size.
    """

    name = "trojan_wm"
    seed_offset = 2_002

    def build(self) -> np.ndarray:
        s, f = self.image_size, self.image_size / REF_SIZE
        i, j = np.mgrid[0:s, 0:s].astype(np.float64)
        centre, radius = 19.0 * f, max(1.5, 5.0 * f)
        ring = np.abs(np.hypot(i - centre, j - centre) - radius) <= max(0.5, 0.8 * f)
        on_diag = np.abs(i + j - (s - 1)) <= max(0.5, f)
        streak = on_diag & ((np.floor(i / max(1.0, 2.0 * f)) % 2) == 0)
        palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255],
                            [0, 255, 255], [255, 255, 255]], dtype=np.float64)
        colours = to_channels(palette[self.rng.integers(0, len(palette), (s, s))], self.channels)
        return np.where((ring | streak)[..., None], colours, 0.0)


@register_trigger("l2_inv")
class L2Inverse(AdditiveTrigger):
    """Dense (l2) reverse-engineered trigger (Neural Cleanse, Wang et al. 2019): weak noise, added.

    As used by Trap-and-Replace (Wang et al. 2022): fixed |N(0, 12)| noise clipped to [0, 68].
    """

    name = "l2_inv"
    seed_offset = 4_004
    sigma: ClassVar[float] = 12.0
    max_value: ClassVar[float] = 68.0

    def build(self) -> np.ndarray:
        return np.clip(np.abs(self.rng.normal(0.0, self.sigma, self.shape)), 0.0, self.max_value)


@register_trigger("smooth")
class Smooth(AdditiveTrigger):
    """Smooth low-frequency trigger (Zeng et al. 2021): a Gaussian blob added, then min-max rescaling.

    "Rethinking the backdoor attacks' triggers: a frequency perspective". The blob has sigma ~10 px,
    peak 51 and centre near (13, 13); each image is then rescaled to the full [0, 255] range.

    ``colour``: "green" (the CIFAR-10 file) or "magenta" (the GTSRB file); gray images use the peak.
    """

    name = "smooth"
    peak: ClassVar[float] = 51.0
    colours: ClassVar[dict[str, tuple[float, float, float]]] = {
        "green": (0.12, 1.0, 0.01),
        "magenta": (1.0, 0.2, 1.0),
    }

    def __init__(self, image_size: int = 32, channels: int = 3, seed: int = 0, colour: str = "green") -> None:
        if colour not in self.colours:
            raise ValueError(f"smooth colour must be one of {sorted(self.colours)}, got {colour!r}")
        self.colour = colour
        super().__init__(image_size, channels, seed)

    def build(self) -> np.ndarray:
        s, f = self.image_size, self.image_size / REF_SIZE
        i, j = np.mgrid[0:s, 0:s].astype(np.float64)
        centre, sigma = 13.0 * f, 10.0 * f
        blob = self.peak * np.exp(-((i - centre) ** 2 + (j - centre) ** 2) / (2 * sigma**2))
        colour = np.array(self.colours[self.colour]) if self.channels == 3 else np.ones(1)
        return blob[..., None] * colour

    def apply(self, images: np.ndarray) -> np.ndarray:
        return map_float(images, self, self._rescaled)

    def _rescaled(self, x: np.ndarray) -> np.ndarray:
        y = x + self.delta
        lo = y.min(axis=(1, 2, 3), keepdims=True)
        hi = y.max(axis=(1, 2, 3), keepdims=True)
        span = hi - lo
        return np.where(span > 0, (y - lo) * 255.0 / np.where(span > 0, span, 1.0), y)
