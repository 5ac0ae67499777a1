"""Results as a Markdown table and PNG figures (learning curves, synthetic samples, SR's trigger)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from abd.metrics import collapse_level  # noqa: E402


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std()) if len(a) > 1 else 0.0


def aggregate(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Per key: the mean over runs, ``<key>_std`` and the per-run values (``<key>_runs``)."""
    out: dict[str, Any] = {"n_runs": len(runs)}
    for k in keys:
        vals = [r[k] for r in runs if k in r and r[k] is not None]
        if vals:
            out[k], out[f"{k}_std"] = mean_std(vals)
            out[f"{k}_runs"] = vals
    return out


def markdown_table(arms: dict[str, dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table, one row per arm; columns are (key, header, kind) with kind '%' or 's'."""
    head = "| arm | " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|---|" + "|".join("---:" for _ in columns) + "|"
    rows = [head, sep]
    for arm, m in arms.items():
        cells = []
        for key, _, kind in columns:
            if key not in m:
                cells.append("-")
                continue
            v, sd = m[key], m.get(f"{key}_std", 0.0)
            scale, unit = (100.0, "") if kind == "%" else (1.0, "")
            txt = f"{scale * v:.1f}" if kind == "%" else f"{v:.3g}" if kind == "x" else f"{v:.1f}"
            if m.get("n_runs", 1) > 1:
                txt += f" ± {scale * sd:.1f}" if kind != "x" else f" ± {sd:.2g}"
            cells.append(txt + unit)
        rows.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """ACC and ASR against rounds, one line per arm."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, recs in curves.items():
        recs = [r for r in recs if "acc" in r and "round" in r]
        if not recs:
            continue
        x = [r["round"] for r in recs]
        axes[0].plot(x, [100 * r["acc"] for r in recs], label=arm)
        if "asr" in recs[0]:
            axes[1].plot(x, [100 * r["asr"] for r in recs], label=arm)
    for ax, name in zip(axes, ("clean accuracy (ACC, %)", "attack success rate (ASR, %)")):
        ax.set_xlabel("round")
        ax.set_ylabel(name)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[1].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _to_display(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalized NCHW -> HWC (or HW) images in [0, 1] for display."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    img = (x.float().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return img[..., 0] if img.shape[-1] == 1 else img


def plot_sample_grids(
    grids: dict[str, torch.Tensor], mean: Sequence[float], std: Sequence[float], path: str | Path, n: int = 32
) -> Path:
    """Side-by-side grids of synthetic samples (normalized tensors), one panel per name."""
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.4), squeeze=False)
    for ax, (name, x) in zip(axes[0], grids.items()):
        imgs = _to_display(x[:n], mean, std)
        cols = int(np.ceil(np.sqrt(len(imgs))))
        rows = int(np.ceil(len(imgs) / cols))
        h, w = imgs.shape[1:3]
        canvas = np.ones((rows * (h + 1), cols * (w + 1)) + imgs.shape[3:])
        for i, im in enumerate(imgs):
            r, c = divmod(i, cols)
            canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = im
        ax.imshow(canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_trigger_vs_delta(
    clean: np.ndarray, triggered: np.ndarray, delta: torch.Tensor, std: Sequence[float], path: str | Path
) -> Path:
    """The true trigger (clean image, triggered image, their difference) beside SR's perturbation."""
    diff = triggered.astype(np.float32) - clean.astype(np.float32)
    d = (delta[0].float().cpu() * torch.tensor(std).view(-1, 1, 1)).permute(1, 2, 0).numpy() * 255.0
    panels = [("clean image", clean, "gray"), ("with the true trigger", triggered, "gray"),
              ("true trigger (difference)", diff, "RdBu_r"), ("SR's synthesized perturbation", d, "RdBu_r")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, (title, img, cmap) in zip(axes, panels):
        img = img[..., 0] if img.shape[-1] == 1 else img
        if cmap == "RdBu_r":
            lim = float(np.abs(img).max()) or 1.0
            shown = img if img.ndim == 2 else img.mean(-1)
            ax.imshow(shown, cmap=cmap, vmin=-lim, vmax=lim)
        else:
            ax.imshow(img.astype(np.uint8), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


DEVELOPMENT_SEEDS = (100, 101, 102)  # the seeds defaults are chosen on; reports run the held-out 0, 1, 2


def protocol(seeds: list[int], development_seeds: tuple[int, ...] | list[int] = DEVELOPMENT_SEEDS,
             what: str = "this study") -> dict:
    """Which seeds chose the defaults and whether `seeds` are held out: ``development_seeds``,
    ``heldout_seeds`` (those of `seeds` not among them), ``seeds`` and a one-line ``text`` to print."""
    dev = list(development_seeds)
    overlap = sorted(set(seeds) & set(dev))
    kind = "held-out" if not overlap else "development" if len(overlap) == len(seeds) else \
        f"development seeds {overlap} among them"
    return {"development_seeds": dev, "heldout_seeds": [s for s in seeds if s not in dev], "seeds": list(seeds),
            "text": f"protocol: defaults chosen on development seeds {dev}; {what} runs seeds {list(seeds)} ({kind})"}


def collapse_line(level: str, who: str, cls: Any, share: float) -> str:
    """``"<collapsed|partial collapse>: <who> answers class <cls> on <share> % of the clean test set"`` for a
    :func:`abd.metrics.collapse_level` `level` (the demo's, grid's and table's warnings)."""
    word = "collapsed" if level == "collapsed" else "partial collapse"
    return f"{word}: {who} answers class {cls} on {100 * share:.0f} % of the clean test set"


def collapse_lines(runs: dict[str, list[dict]], seeds: list[int]) -> list[str]:
    """One line per collapsed or partially collapsed run (:func:`abd.metrics.collapse_level` of its
    ``pred_max_share``; ``collapsed`` alone for a record without it): ``runs`` maps a row name to its per-seed
    metrics, in the order of `seeds`."""
    out = []
    for name, per_seed in runs.items():
        for seed, m in zip(seeds, per_seed):
            level = collapse_level(m.get("pred_max_share")) or ("collapsed" if m.get("collapsed") else None)
            if level:
                out.append("- " + collapse_line(level, f"[seed {seed}] {name}", m.get("pred_max_class"),
                                                m.get("pred_max_share", 1.0)))
    return out
