"""Foreign models: a user's own architecture (a registered name or an importable ``module:factory``) whose
outputs may be a tuple or a dict, built the same way every time a teacher folder is loaded.

A folder's ``teacher.json`` may name a factory, but loading a folder never imports code: the factory's
module must already be imported by the caller (the command line imports it when ``--teacher-model``
names it), otherwise the load is refused with the way to allow it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

import torch
import torch.nn as nn

GEOMETRY = ("num_classes", "in_channels", "image_size")


class ModelSpecError(ValueError):
    """A model name or factory that cannot be built."""


class Logits(nn.Module):
    """A classifier whose forward returns a tuple or a dict, reduced to the logits it holds (``output``: a
    tuple index or a dict key). The wrapped model's weights keep their own names (``model.`` prefixed)."""

    def __init__(self, model: nn.Module, output: int | str) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out
        try:
            return out[self.output]
        except (KeyError, IndexError, TypeError) as e:
            raise ModelSpecError(f"the model's output {type(out).__name__} has no entry {self.output!r} "
                                 "(set the teacher's output: an index of its tuple or a key of its dict)") from e


def resolve_factory(spec: str, import_module: bool = False) -> Any:
    """The callable ``module:factory`` names; its module is imported only with `import_module` (a caller's
    explicit choice), otherwise it must already be imported."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ModelSpecError(f"{spec!r}: name a registered model or a factory as module:function")
    if module not in sys.modules:
        if not import_module:
            raise ModelSpecError(f"the teacher names the factory {spec!r}, whose module {module!r} is not imported; "
                                 f"a teacher folder never imports code: pass --teacher-model {spec} (or import "
                                 "it yourself) to allow it")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ModelSpecError(f"cannot import {module!r} for --teacher-model {spec}: {e}") from None
    obj = sys.modules[module]
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ModelSpecError(f"{module!r} has no {attr!r} (--teacher-model {spec})")
    if not callable(obj):
        raise ModelSpecError(f"{spec!r} is not callable")
    return obj


def build_model(arch: dict[str, Any], import_module: bool = False) -> nn.Module:
    """The model an ``arch`` record describes: ``name`` (registered, or ``module:factory``), the geometry,
    the registered model's own keyword arguments, and ``output`` (tuple index / dict key of the logits)."""
    from abd.models import create_model

    arch = dict(arch)
    name, output = arch.pop("name"), arch.pop("output", None)
    if ":" in name:
        factory = resolve_factory(name, import_module)
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        model = factory(**{k: v for k, v in arch.items() if takes_all or k in params})
        if not isinstance(model, nn.Module):
            raise ModelSpecError(f"{name} returned {type(model).__name__}, not a torch.nn.Module")
    else:
        model = create_model(name, **arch)
    if output is not None:
        model = Logits(model, output)
    model.arch = {"name": name, **arch, **({"output": output} if output is not None else {})}
    return model


@torch.no_grad()
def check_logits(model: nn.Module, shape: tuple[int, ...], num_classes: int) -> None:
    """Refuse a model whose logits on a probe batch are not a finite (N, num_classes) tensor."""
    was = model.training
    model.eval()
    try:
        out = model(torch.zeros(2, *shape))
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor):
        raise ModelSpecError(f"the model returns {type(out).__name__}: name the logits with --teacher-output "
                             "(a tuple index or a dict key)")
    if out.shape != (2, num_classes):
        raise ModelSpecError(f"the model's logits have shape {tuple(out.shape[1:])} per input, expected "
                             f"({num_classes},) for the dataset's classes")
    if not bool(torch.isfinite(out).all()):
        raise ModelSpecError("the model's logits on a probe batch are not finite (NaN or inf)")
