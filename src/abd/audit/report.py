"""``abd audit``: run a detector on a saved model and write its verdict (JSON, a per-class bar chart and
the suspect trigger)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from abd.audit.base import AuditResult, ModelSpec, create_detector
from abd.utils import resolve_device, write_json

DEFAULT_DETECTOR = "mmbd"


def audit_model(model: torch.nn.Module, spec: ModelSpec, detector: str = DEFAULT_DETECTOR,
                options: dict[str, Any] | None = None, device: str = "auto", seed: int = 0,
                progress: bool = True) -> AuditResult:
    """Run `detector` on `model` (no data is used)."""
    dev = resolve_device(device)
    return create_detector(detector, options).run(model.to(dev), spec, dev, seed=seed, progress=progress)


def verdict_line(r: AuditResult) -> str:
    """One line: the verdict, its score against the threshold, and the suspected target class."""
    if r.backdoored:
        return (f"BACKDOORED: {r.detector} score {r.score:.2f} > threshold {r.threshold:.2f}; suspected target "
                f"class {r.target_class}")
    return (f"no backdoor found: {r.detector} score {r.score:.2f} <= threshold {r.threshold:.2f} (most suspect "
            f"class {r.target_class})")


def write_audit(r: AuditResult, out_dir: str | Path, reference: dict[str, Any] | None = None) -> dict[str, Path]:
    """``audit.json``, ``per_class.png`` and (when the detector yields one) ``trigger.png`` in `out_dir`.
    `reference`: what the model's folder says about how it was made (reported, never used)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(out / "audit.json", {**r.to_json(), **({"reference": reference} if reference
                                                                         else {})})}
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(r.per_class)), 3))
    colors = ["tab:red" if (i == r.target_class and r.backdoored) else "tab:gray" for i in range(len(r.per_class))]
    ax.bar(range(len(r.per_class)), r.per_class, color=colors)
    ax.set_xticks(range(len(r.per_class)))
    ax.set_xlabel("class")
    ax.set_ylabel(r.statistic)
    ax.set_title(verdict_line(r).split(";")[0].split(":")[0] + f" ({r.detector}, score {r.score:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "per_class.png", dpi=120)
    plt.close(fig)
    paths["per_class"] = out / "per_class.png"
    if r.trigger is not None:
        panels = [(f"suspect: class {r.target_class}", r.trigger)]
        ref = r.extra.get("reference_image")
        if isinstance(ref, torch.Tensor):
            panels.append(("reference", ref))
        fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.4))
        for ax, (title, img) in zip(list(axes) if len(panels) > 1 else [axes], panels):
            img = img.detach().float().clamp(0, 1)
            ax.imshow(img[0] if img.shape[0] == 1 else img.permute(1, 2, 0), cmap="gray" if img.shape[0] == 1
                      else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "trigger.png", dpi=120)
        plt.close(fig)
        paths["trigger"] = out / "trigger.png"
    return paths
