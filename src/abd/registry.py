"""A small name -> component registry, one per kind of component (datasets, models, triggers, methods)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised for a name that is not registered; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to components (classes or factory functions).

    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def tiny(num_classes=10): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that records `obj` under `name` (names are unique)."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def register_named(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``register`` that also sets the class's ``name`` attribute."""

        def deco(cls: T) -> T:
            cls.name = name  # type: ignore[attr-defined]
            return self.register(name)(cls)

        return deco

    def get(self, name: str) -> T:
        """The component registered as `name`; unknown names fail with a suggestion."""
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"
            ) from None

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, optionally filtered with a shell-style pattern such as ``"wrn*"``."""
        out = sorted(self._items)
        return [n for n in out if pattern is None or fnmatch.fnmatch(n, pattern)]

    def summary(self) -> dict[str, str]:
        """Name -> first line of the component's docstring."""
        return {n: ((self._items[n].__doc__ or "").strip().splitlines() or [""])[0] for n in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
