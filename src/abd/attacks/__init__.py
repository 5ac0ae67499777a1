"""Attacks: the trigger suite (a registry of named triggers) and a trigger gallery."""

from __future__ import annotations

from abd.attacks import clean_label, triggers  # noqa: F401  (register triggers)
from abd.attacks.base import TRIGGERS, Trigger, register_trigger
from abd.attacks.gallery import save_gallery
from abd.attacks.triggers import AdditiveTrigger, BlendTrigger


def create_trigger(name: str, image_size: int = 32, channels: int = 3, seed: int = 0, **kwargs) -> Trigger:
    """Build the registered trigger ``name`` for ``image_size`` x ``image_size`` images with ``channels``."""
    return TRIGGERS.get(name)(image_size=image_size, channels=channels, seed=seed, **kwargs)


def list_triggers(pattern: str | None = None) -> list[str]:
    """Registered trigger names, optionally filtered (``"trojan*"``)."""
    return TRIGGERS.names(pattern)


__all__ = [
    "TRIGGERS",
    "AdditiveTrigger",
    "BlendTrigger",
    "Trigger",
    "create_trigger",
    "list_triggers",
    "register_trigger",
    "save_gallery",
]
