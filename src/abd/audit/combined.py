"""The combined detector: the shuffle and retrospect detectors together.

Measured on the teacher zoo, the two see different backdoors: the shuffled copies lean to the target of an
image-wide trigger (blend, sig, smooth, l2_inv) and miss small patches, while the per-class mask search
finds a patch's target by its small mask and cannot express an image-wide blend as a small mask. Each
part's score is divided by its own threshold (both chosen on development-seed teachers), and the
combined score is the larger ratio, flagged above 1; the suspect class is that part's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field

from abd.audit.base import AuditResult, Detector, ModelSpec, create_detector, register_detector
from abd.config import Config

PARTS = ("shuffle", "retrospect")


class CombinedOptions(Config):
    """Combined-detector options: the parts' own options."""

    shuffle: dict = Field(default_factory=dict, description="options of the shuffle part")
    retrospect: dict = Field(default_factory=dict, description="options of the retrospect part")


@register_detector("combined")
class Combined(Detector):
    """shuffle (image-wide triggers) and retrospect (patches), each against its own threshold."""

    Options = CombinedOptions
    opts: CombinedOptions

    def detect(self, model: nn.Module, spec: ModelSpec, device: torch.device, seed: int,
               progress: bool) -> AuditResult:
        parts, skipped = {}, {}
        for name in PARTS:  # a part that cannot look at this model (shuffle: no multi-channel conv) is left out
            try:
                parts[name] = create_detector(name, getattr(self.opts, name)).run(model, spec, device, seed, progress)
            except ValueError as e:
                skipped[name] = str(e)
        if not parts:
            raise ValueError("combined: " + "; ".join(skipped.values()))
        return combine(parts, spec.num_classes, skipped)


def combine(parts: dict[str, AuditResult], num_classes: int, skipped: dict[str, str] | None = None) -> AuditResult:
    """The combined verdict from the parts' results (each score over its own threshold, the larger wins);
    its ``seconds`` are the parts' together."""
    ratios = {name: r.score / r.threshold for name, r in parts.items()}
    lead = max(ratios, key=ratios.get)
    best = parts[lead]
    per_class = [max(p.per_class[c] / p.threshold for p in parts.values()) for c in range(num_classes)]
    return AuditResult(detector="combined", score=ratios[lead], threshold=1.0,
                       probability=max(r.probability for r in parts.values()), target_class=best.target_class,
                       per_class=per_class, statistic=f"larger of the parts' score / threshold ({lead})",
                       trigger=best.trigger, mask=best.mask, seconds=sum(r.seconds for r in parts.values()),
                       extra={"lead": lead, "skipped": skipped or {},
                              **{f"{n}_score": r.score for n, r in parts.items()},
                              **{k: v for k, v in best.extra.items() if k == "reference_image"}})
