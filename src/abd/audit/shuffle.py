"""The shuffle detector: the Shuffling Vaccine's signal as a model audit (after Cai et al., NeurIPS 2022).

Permuting the input channels of a late conv layer destroys the features a model computes for clean
classes, while a backdoor's shortcut to its target class tends to survive it. On inputs made without any
data (uniform noise in the pixel box), copies of the model with shuffled channels then lean towards the
target class. Per class, the statistic is the shuffled copies' mean probability on the noise; the score is
the largest of them (the share of the most favoured class), and the verdict compares it with a threshold
chosen on development-seed teachers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field

from abd.audit.base import AuditResult, Detector, ModelSpec, register_detector
from abd.config import Config
from abd.defense.shuffle import frozen_copy, select_layers, shufflable_layers, shuffle_input_channels


class ShuffleOptions(Config):
    """Shuffle-detector options."""

    copies: int = Field(8, ge=1, description="shuffled copies")
    inputs: int = Field(256, ge=1, description="uniform-noise inputs")
    threshold: float = Field(0.5, gt=0, lt=1, description="flag when one class's mean probability exceeds it")


@register_detector("shuffle")
class ShuffleDetector(Detector):
    """Shuffled-channel copies on noise: a backdoored model's copies lean towards its target class."""

    Options = ShuffleOptions
    opts: ShuffleOptions

    def detect(self, model: nn.Module, spec: ModelSpec, device: torch.device, seed: int,
               progress: bool) -> AuditResult:
        o = self.opts
        g = torch.Generator().manual_seed(seed)
        x = spec.normalize(torch.rand(o.inputs, spec.channels, spec.image_size, spec.image_size, generator=g))
        x = x.to(device)
        layers = select_layers(shufflable_layers(model), 1)
        if not layers:
            raise ValueError(f"shuffle: {type(model).__name__} has no conv layer with more than one input channel")
        name = layers[0][0]
        probs = []
        for _ in range(o.copies):
            copy = frozen_copy(model)
            shuffle_input_channels(dict(copy.named_modules())[name], g)
            with torch.no_grad():
                probs.append(copy(x).softmax(1).mean(0).cpu())
        per_class = torch.stack(probs).mean(0)
        top = int(per_class.argmax())
        score = float(per_class[top])
        return AuditResult(detector=self.name, score=score, threshold=o.threshold, probability=score,
                           target_class=top, per_class=[float(v) for v in per_class],
                           statistic="shuffled copies' mean probability on noise",
                           extra={"layer": name})
