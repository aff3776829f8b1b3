"""Packages whose public names are imported on first use (PEP 562), so that ``import oncolens.X`` and the
command line's start-up do not pay for torch, scikit-learn or pandas before a command needs them."""

from __future__ import annotations

import importlib
import sys
import types

__all__ = ["lazy_package"]


class _LazyPackage(types.ModuleType):
    """A package module that resolves its exported names from their submodules when first read."""

    _lazy_exports: dict[str, tuple[str, str]]

    def __getattr__(self, name: str):
        exports = self.__dict__.get("_lazy_exports", {})
        if name not in exports:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        module, attr = exports[name]
        value = getattr(importlib.import_module(module, self.__name__), attr)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        # importing submodule ``x`` binds the package attribute ``x`` to the module; where the package exports a
        # function of the same name (``oncolens.data.split``), the function stays what the name means
        exports = self.__dict__.get("_lazy_exports", {})
        if isinstance(value, types.ModuleType) and name in exports:
            return
        types.ModuleType.__setattr__(self, name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(self.__dict__) | set(self.__dict__.get("_lazy_exports", {})))


def lazy_package(name: str, exports: dict[str, str]) -> None:
    """Make package ``name`` import each exported name from its submodule on first use.

    ``exports`` maps a public name to ``".submodule"`` or ``".submodule:attribute"`` (a different name there).
    """
    module = sys.modules[name]
    table = {}
    for public, target in exports.items():
        submodule, _, attr = target.partition(":")
        table[public] = (submodule, attr or public)
    module.__class__ = _LazyPackage
    types.ModuleType.__setattr__(module, "_lazy_exports", table)
