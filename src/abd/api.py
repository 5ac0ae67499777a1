"""The public Python API: load a model, audit it, distill it safely (re-exported by ``abd``).

Heavy modules are imported inside the functions, so that ``import abd`` stays fast.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn

    from abd.audit import AuditResult, ModelSpec


def make_callable(module: str, function: str) -> None:
    """Make the package `module` callable as this module's `function`: ``abd.audit`` and ``abd.distill``
    are packages and, called, the functions of the public API."""

    class CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return globals()[function](*args, **kwargs)

    CallablePackage.__call__.__doc__ = globals()[function].__doc__
    sys.modules[module].__class__ = CallablePackage


def load_teacher(path: str | Path, model: str | None = None, dataset: str | None = None,
                 output: int | str | None = None) -> nn.Module:
    """A model from a teacher folder (``teacher.safetensors`` + ``teacher.json``), or from a weights file
    (safetensors, or a .pt/.pth state dict read with ``weights_only=True``) with its architecture `model`
    (a registered name or ``module:factory``) and its `dataset` (for the input geometry). The model comes
    back in eval mode; its folder's metadata is in ``model.abd_meta``."""
    import tempfile

    from abd.checkpoint import import_teacher, load_model

    p = Path(path)
    if p.is_dir():
        net, meta = load_model(p, "teacher")
    else:
        if model is None or dataset is None:
            raise ValueError(f"{p} is a weights file: give model= (its architecture) and dataset= as well")
        with tempfile.TemporaryDirectory() as tmp:
            net, meta = load_model(import_teacher(p, model, dataset, Path(tmp) / "teacher", output=output),
                                   "teacher")
    net.abd_meta = meta
    return net.eval()


def model_spec(dataset: str, data_root: str | None = None) -> ModelSpec:
    """The input geometry and normalization of a registered dataset's models (channels, image size,
    classes, mean, std)."""
    from abd.audit import ModelSpec
    from abd.data import load_dataset

    ds = load_dataset(dataset, root=data_root)
    return ModelSpec(ds.channels, ds.image_size, ds.num_classes, tuple(ds.mean), tuple(ds.std))


def audit(model: nn.Module, dataset: str | None = None, spec: ModelSpec | None = None, detector: str = "mmbd",
          options: dict[str, Any] | None = None, device: str = "auto", seed: int = 0,
          progress: bool = False) -> AuditResult:
    """Is `model` backdoored, and for which class? Runs a registered detector on the weights alone (no data;
    `dataset` or `spec` only gives the input geometry). Returns the verdict (``.backdoored``), its score
    and threshold, the suspected ``.target_class`` and the per-class statistic."""
    from abd.audit.report import audit_model

    if spec is None:
        if dataset is None:
            raise ValueError("give dataset= (a registered dataset) or spec= (an abd.audit.ModelSpec)")
        spec = model_spec(dataset)
    return audit_model(model, spec, detector, options, device, seed, progress)


def distill(teacher: nn.Module, dataset: str, method: str = "zskt", defense: str = "abd",
            student: str | nn.Module = "lenet5_half", rounds: int | None = None, out: str | Path = "runs/distill",
            method_options: dict[str, Any] | None = None, defense_options: dict[str, dict[str, Any]] | None = None,
            evaluate: bool = True, trigger: str | None = None, target: int = 0, seed: int = 0,
            device: str = "auto", progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Distill `teacher` (any ``nn.Module`` returning logits) into `student` (a registered model name or a
    module) with a data-free KD `method` and a `defense` (``abd``, ``none``, ``clp``, ``dhbe``, ...).

    `dataset` names the input format (geometry, normalization, classes); its test set measures the student
    when `evaluate` is true (ACC, and ASR too when you know a `trigger` and its `target`), and nothing of it
    is used for training. Writes the run's files to `out` (``student.safetensors``, ``metrics.json``,
    ``curve.jsonl``, ``config.yaml``); returns the student and the metrics."""
    import copy

    import torch.nn as tnn

    from abd.attacks import create_trigger
    from abd.attacks.poison import make_eval_data
    from abd.data import load_dataset
    from abd.distill.base import KDContext
    from abd.distill.config import DistillConfig
    from abd.distill.engine import Distiller
    from abd.models import create_model
    from abd.utils import resolve_device, seed_everything

    if not isinstance(teacher, tnn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__} (abd.load_teacher "
                        "reads one from a folder or a weights file)")
    seed_everything(seed)
    dev = resolve_device(device)
    ds = load_dataset(dataset)
    name = student if isinstance(student, str) else type(student).__name__
    opts = {**(method_options or {}), **({"rounds": rounds} if rounds is not None else {})}
    cfg = DistillConfig(teacher=f"<{type(teacher).__name__} given in Python>", method=method, defense=defense,
                        student=name if isinstance(student, str) else "lenet5_half", method_options=opts,
                        defense_options=defense_options or {}, seed=seed, device=str(dev))
    net = create_model(student, num_classes=ds.num_classes, in_channels=ds.channels, image_size=ds.image_size) \
        if isinstance(student, str) else student
    frozen_teacher = copy.deepcopy(teacher).to(dev).eval()  # the caller's model is left as it was
    ctx = KDContext(teacher=frozen_teacher, student=net.to(dev), num_classes=ds.num_classes, channels=ds.channels,
                    image_size=ds.image_size, mean=ds.mean, std=ds.std, device=dev)
    eval_data = None
    if evaluate:
        trig = create_trigger(trigger, image_size=ds.image_size, channels=ds.channels) if trigger else None
        eval_data = make_eval_data(ds, trig, target if trig else None)
    metrics = Distiller(cfg, ctx, eval_data, out, progress=progress).run()
    return ctx.student, metrics
