"""One registry type for everything oncolens looks up by name: models, heads, layouts, explanation methods,
conformal scores, OOD detectors, perturbations, stain methods, bundle kinds, scoring back-ends, trackers.

One policy everywhere: registering a taken name is an error unless ``override=True`` says the replacement
is meant; asking for an unknown name is a :class:`~oncolens.errors.ConfigError` that lists the known ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, in registration order; reads like a read-only mapping."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, override: bool = False) -> T:
        """Add ``entry`` as ``name``; a taken name is refused unless ``override``."""
        if name in self._entries and not override:
            raise ConfigError(f"{self.kind} {name!r} is already registered (pass override=True to replace it)")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str | None = None, override: bool = False) -> Callable[[T], T]:
        """``@registry.decorator("name")``: register the decorated object (under its ``name`` attribute or
        ``__name__`` when no name is given) and return it unchanged."""
        def decorate(entry: T) -> T:
            self.register(name or getattr(entry, "name", None) or entry.__name__, entry, override)
            return entry

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {', '.join(self._entries) or 'none'}") \
                from None

    __getitem__ = get

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
