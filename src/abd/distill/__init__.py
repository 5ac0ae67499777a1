"""Distillation: the engine, the KD-method registry and the methods.

The package is also callable: ``abd.distill(teacher, dataset="mnist5k", ...)`` is :func:`abd.api.distill`.
"""

from abd.api import make_callable
from abd.distill import clean, cmi, dafl, deepinv, dfad, ood, zskt  # noqa: F401  (register methods)
from abd.distill.base import METHODS, KDContext, KDMethod, MethodOptions, create_method, register_method

__all__ = ["METHODS", "KDContext", "KDMethod", "MethodOptions", "create_method", "register_method"]

make_callable(__name__, "distill")
