"""Models: a registry of classifiers (LeNet, WRN, ResNet, VGG), KD generators and feature hooks."""

from abd.models import lenet, resnet, vgg, wrn  # noqa: F401  (register models)
from abd.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "create_model", "list_models", "register_model"]
