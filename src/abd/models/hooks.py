"""Forward hooks the KD methods and defenses need: block activations (attention transfer), BatchNorm
statistics (DeepInversion, Yin et al. 2020; CMI, Fang et al. 2021), penultimate features (DAFL, Chen et al.
2019) and the list of conv layers (the Shuffling Vaccine). They work on any ``nn.Module`` classifier."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn


def feature_layers(model: nn.Module) -> tuple[str, ...]:
    """Names of the submodules whose outputs are the model's block activations (``()`` if undeclared)."""
    return tuple(getattr(model, "feature_layers", ()) or ())


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} has no submodule {name!r}") from None


@contextmanager
def capture_features(model: nn.Module, names: Sequence[str]) -> Iterator[list[Any]]:
    """Capture the outputs of the submodules ``names`` (dotted names allowed).

    Yields a list with one slot per name; after each forward pass slot i holds the output of ``names[i]``
    (with its autograd graph). The hooks are removed on exit.

    >>> with capture_features(model, feature_layers(model)) as feats:
    ...     logits = model(x)
    """
    out: list[Any] = [None] * len(names)
    handles = []

    def make_hook(i: int):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            out[i] = output

        return hook

    try:
        for i, name in enumerate(names):
            handles.append(_submodule(model, name).register_forward_hook(make_hook(i)))
        yield out
    finally:
        for h in handles:
            h.remove()


class BNStatHook:
    """Records, on each forward of a ``BatchNorm2d``, how far the batch statistics of its input are from the
    running ones (DeepInversion's feature-distribution regularizer, Yin et al. 2020).

    Attributes after a forward:
        r_feature: ``||mean_batch - running_mean||_2 + ||var_batch - running_var||_2`` (scalar tensor, with
            gradient to the input); the variance is biased (over N, H, W).
        instance_mean: the per-sample channel means of the BN input, shape (N, C) (CMI's contrastive
            features).
    """

    def __init__(self, module: nn.BatchNorm2d) -> None:
        self.module = module
        self.r_feature: torch.Tensor | None = None
        self.instance_mean: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), correction=0)
        bn = self.module
        self.r_feature = torch.norm(bn.running_mean - mean, 2) + torch.norm(bn.running_var - var, 2)
        self.instance_mean = x.mean(dim=(2, 3))

    def remove(self) -> None:
        """Detach the hook from its module."""
        self.handle.remove()


def bn_stat_hooks(model: nn.Module) -> list[BNStatHook]:
    """One :class:`BNStatHook` per ``BatchNorm2d`` (with running statistics) of ``model``, in module order.

    Raises ValueError for a model without such layers: BN-statistics losses cannot be computed for it.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    if not bns:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layers: "
            "BN-statistics losses need a teacher with BatchNorm"
        )
    return [BNStatHook(m) for m in bns]


def remove_hooks(hooks: Sequence[BNStatHook]) -> None:
    """Remove every hook in ``hooks``."""
    for h in hooks:
        h.remove()


@contextmanager
def penultimate_features(model: nn.Module) -> Iterator[list[Any]]:
    """Capture the input of the model's last ``nn.Linear`` (the penultimate features, DAFL's activation loss).

    Yields a one-slot list; after a forward pass ``feats[0]`` is the (N, D) feature tensor.
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to take penultimate features from")
    out: list[Any] = [None]

    def hook(module: nn.Module, inputs: tuple) -> None:
        out[0] = inputs[0]

    handle = linears[-1].register_forward_pre_hook(hook)
    try:
        yield out
    finally:
        handle.remove()


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """All ``nn.Conv2d`` modules with their qualified names, in registration (state-dict) order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
