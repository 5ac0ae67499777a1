"""The model registry and ``create_model``."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from abd.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs
) -> nn.Module:
    """Build a registered classifier for inputs of shape (N, in_channels, image_size, image_size)."""
    factory = MODELS.get(name)
    model = factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    model.arch = {"name": name, "num_classes": num_classes, "in_channels": in_channels,
                  "image_size": image_size, **kwargs}
    return model


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered (``"wrn*"``)."""
    return MODELS.names(pattern)
