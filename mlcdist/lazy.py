"""Lazy package attributes: ``from mlcdist.eval import finetune`` without importing every module
(and torch) when a command only needs ``--help``."""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_attributes(package: str, homes: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.homes[name]`` on first use of ``name``
    and caches the value in the package's ``namespace`` (its ``globals()``)."""
    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{homes[name]}"), name)
        namespace[name] = value
        return value
    return __getattr__
