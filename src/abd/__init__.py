"""abd: backdoor-safe data-free knowledge distillation.

Implements ABD (Hong et al., "Revisiting data-free knowledge distillation with poisoned teachers",
ICML 2023) and goes beyond it: data-free KD methods, backdoor defenses (ABD's Shuffling Vaccine and
Self-Retrospection, CLP, DHBE) and model audits (MM-BD, shuffle, retrospect, combined), on one engine.

The public API:

- ``load_teacher(path, model=None, dataset=None)``: a model from a teacher folder or a weights file.
- ``audit(model, dataset=...)``: is it backdoored, which class (``abd.audit.AuditResult``).
- ``distill(teacher, dataset=..., method="zskt", defense="abd", ...)``: a defended student and its metrics.
- ``model_spec(dataset)``: a dataset's input geometry and normalization, for ``audit(spec=...)``.
- The registries, to add a component with one file: ``register_trigger``, ``register_method``,
  ``register_defense``, ``register_detector``, ``register_model``, ``register_dataset``.

>>> import abd
>>> sorted(n for n in abd.__all__ if not n.startswith("register"))
['__version__', 'audit', 'distill', 'load_teacher', 'model_spec']
"""

from typing import Any

from abd.api import audit, distill, load_teacher, model_spec

__version__ = "0.1.0"

_REGISTER = {
    "register_trigger": ("abd.attacks.base", "register_trigger"),
    "register_method": ("abd.distill.base", "register_method"),
    "register_defense": ("abd.defense.base", "register_defense"),
    "register_detector": ("abd.audit.base", "register_detector"),
    "register_model": ("abd.models.registry", "register_model"),
    "register_dataset": ("abd.data.base", "register_dataset"),
}

__all__ = ["__version__", "audit", "distill", "load_teacher", "model_spec", *_REGISTER]


def __getattr__(name: str) -> Any:
    """The registries' decorators, imported on first use (``import abd`` does not load torch)."""
    if name in _REGISTER:
        import importlib

        module, attr = _REGISTER[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'abd' has no attribute {name!r}")
