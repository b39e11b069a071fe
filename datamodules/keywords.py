"""Passing settings on by keyword without writing each name twice (`name=name` for every parameter)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any


def declared_defaults(target: Callable) -> dict[str, Any]:
    """The default of each parameter `target` declares one for (a class: its `__init__`'s), by name.

    Args:
        target: a function or class whose defaults another signature reuses, so each default is written once.
    """
    params = inspect.signature(target).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def keyword_args(target: Callable, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `values` that `target` declares a named parameter for: `target(**keyword_args(target, locals()))`
    passes a function's settings on by keyword, each under its declared name.

    Args:
        target: the function or class (its `__init__`) that receives the settings.
        values: the settings by name (typically the caller's `locals()`); names `target` lacks are left out.
    """
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {p.name for p in inspect.signature(target).parameters.values() if p.kind in kinds}
    return {name: value for name, value in values.items() if name in names}
