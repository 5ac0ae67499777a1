"""Foreign models: a user's own architecture (a registered name or an importable ``module:factory``) whose
outputs may be a tuple or a dict, built the same way every time a teacher folder is loaded.

A folder's ``teacher.json`` may name a factory, but loading a folder never runs code it names: only a
factory the user named in this process (``--teacher-model``, or :func:`allow_factory`) is called, and only
with the integer geometry (num_classes, in_channels, image_size); any other is refused with the way to allow
it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

import torch
import torch.nn as nn

GEOMETRY = ("num_classes", "in_channels", "image_size")
_ALLOWED: set[str] = set()  # module:factory specs the user named in this process


def allow_factory(spec: str) -> None:
    """Allow teacher folders to name the factory `spec` (``module:function``) in this process."""
    _ALLOWED.add(spec)


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
    """The callable ``module:factory`` names. With `import_module` (the user names it: ``--teacher-model``)
    its module is imported and the factory allowed for this process; otherwise (a folder names it) it must
    have been allowed before."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ModelSpecError(f"{spec!r}: name a registered model or a factory as module:function")
    if import_module:
        allow_factory(spec)
    elif spec not in _ALLOWED:
        raise ModelSpecError(f"the teacher names the factory {spec!r}, which was not allowed in this process; a "
                             f"teacher folder never imports or runs code it names: pass --teacher-model {spec} "
                             "(or call abd.models.foreign.allow_factory) to allow it")
    if module not in sys.modules:
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
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            raise ModelSpecError(f"{name} is not a Python function or class that builds a model") from None
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: int(arch[k]) for k in GEOMETRY if k in arch and (takes_all or k in params)}
        try:
            model = factory(**kwargs)
        except TypeError as e:  # not a model factory (or one taking other arguments)
            raise ModelSpecError(f"{name} cannot be called as a model factory with {kwargs}: {e}") from e
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
