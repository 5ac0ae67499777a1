"""Models: a registry of classifiers (LeNet, WRN, ResNet, VGG), KD generators and feature hooks."""

from abd.models import generators, hooks, lenet, resnet, vgg, wrn  # noqa: F401  (register models)
from abd.models.generators import (
    GENERATORS,
    CMIGenerator,
    LargeGenerator,
    ZSKTGenerator,
    create_generator,
    list_generators,
)
from abd.models.hooks import (
    BNStatHook,
    bn_stat_hooks,
    capture_features,
    conv_layers,
    feature_layers,
    penultimate_features,
    remove_hooks,
)
from abd.models.registry import MODELS, create_model, list_models, register_model

__all__ = [
    "GENERATORS",
    "MODELS",
    "BNStatHook",
    "CMIGenerator",
    "LargeGenerator",
    "ZSKTGenerator",
    "bn_stat_hooks",
    "capture_features",
    "conv_layers",
    "create_generator",
    "create_model",
    "feature_layers",
    "list_generators",
    "list_models",
    "penultimate_features",
    "register_model",
    "remove_hooks",
]
