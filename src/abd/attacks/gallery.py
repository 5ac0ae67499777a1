"""A picture of every trigger: clean image, triggered image and their difference, one row per trigger."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # Figure.savefig renders with Agg; no pyplot, no global backend


def _show(ax: Axes, image: np.ndarray, title: str = "") -> None:
    """Draw one HWC image (uint8, or float in [0, 255]) without ticks."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(np.clip(image, 0, 255).astype(np.uint8), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _row(axes: Sequence[Axes], name: str, clean: np.ndarray, triggered: np.ndarray) -> None:
    """clean[0] | triggered[0] | |difference| (stretched) | triggered[1:]."""
    diff = np.abs(triggered[0].astype(np.float64) - clean[0].astype(np.float64))
    diff = diff * (255.0 / diff.max()) if diff.max() > 0 else diff
    _show(axes[0], clean[0], "clean")
    _show(axes[1], triggered[0], name)
    _show(axes[2], diff, "|difference|")
    for ax, img in zip(axes[3:], triggered[1:]):
        _show(ax, img, name)
    axes[0].set_ylabel(name, fontsize=9)


def save_gallery(
    images: np.ndarray,
    out_dir: str | Path,
    triggers: Sequence[str] | None = None,
    seed: int = 0,
    max_images: int = 4,
) -> Path:
    """Write ``triggers.png`` (a row per trigger) and ``trigger_<name>.png`` per trigger into ``out_dir``.

    ``images``: a few clean uint8 NHWC images; the image size and channels come from them. Test-time
    triggers (``apply``) are shown, so ``cl`` appears as its 4-corner grid. Returns the overview's path.
    """
    from abd.attacks import create_trigger, list_triggers

    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        msg = f"save_gallery expects non-empty uint8 NHWC images, got {images.dtype} {images.shape}"
        raise ValueError(msg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(triggers) if triggers is not None else list_triggers()
    clean = images[:max_images]
    ncols = 2 + len(clean)
    rows = []
    for name in names:
        trig = create_trigger(name, image_size=images.shape[1], channels=images.shape[3], seed=seed)
        triggered = trig.apply(clean)
        rows.append((name, triggered))
        fig = Figure(figsize=(1.6 * ncols, 1.8))
        _row(fig.subplots(1, ncols, squeeze=False)[0], name, clean, triggered)
        fig.tight_layout()
        fig.savefig(out / f"trigger_{name}.png", dpi=100)

    fig = Figure(figsize=(1.6 * ncols, 1.7 * max(1, len(rows))))
    grid = fig.subplots(max(1, len(rows)), ncols, squeeze=False)
    for axes, (name, triggered) in zip(grid, rows):
        _row(axes, name, clean, triggered)
    fig.tight_layout()
    path = out / "triggers.png"
    fig.savefig(path, dpi=100)
    return path
