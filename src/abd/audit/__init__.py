"""Auditing an untrusted model from its weights alone: registered detectors (``abd audit``).

The package is also callable: ``abd.audit(model, dataset="mnist5k")`` is :func:`abd.api.audit`.

>>> import torch
>>> from abd.audit import ModelSpec, create_detector
>>> from abd.models import create_model
>>> _ = torch.manual_seed(0)
>>> model = create_model("lenet5", num_classes=10, in_channels=1, image_size=28)
>>> spec = ModelSpec(channels=1, image_size=28, num_classes=10, mean=(0.1307,), std=(0.3081,))
>>> result = create_detector("mmbd", {"starts": 2, "steps": 5}).run(model, spec, torch.device("cpu"))
>>> sorted(result.to_json())[:4], len(result.per_class)
(['backdoored', 'detector', 'p_value', 'per_class'], 10)
"""

from abd.api import make_callable
from abd.audit.base import DETECTORS, AuditResult, Detector, ModelSpec, create_detector, register_detector
from abd.audit.combined import Combined, CombinedOptions
from abd.audit.mmbd import MMBD, MMBDOptions, max_margins, order_pvalue
from abd.audit.retrospect import Retrospect, RetrospectOptions
from abd.audit.shuffle import ShuffleDetector, ShuffleOptions

__all__ = [
    "DETECTORS",
    "MMBD",
    "AuditResult",
    "Combined",
    "CombinedOptions",
    "Detector",
    "MMBDOptions",
    "Retrospect",
    "RetrospectOptions",
    "ModelSpec",
    "ShuffleDetector",
    "ShuffleOptions",
    "create_detector",
    "max_margins",
    "order_pvalue",
    "register_detector",
]


make_callable(__name__, "audit")
