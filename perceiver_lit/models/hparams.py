"""One declaration per hyperparameter: a model's keyword arguments are the only place its settings are written.

Each model states its settings once, in its `__init__` signature (name, type, default) with an `Args:` line in
its docstring (which `perceiver-lit fit --help` and `--print_config` show). What other code reads as a config
dataclass (`PerceiverConfig`, ... : presets' overrides, `perceiver-lit-convert`'s files, HF export, `model.config`
at run time) is derived from that signature by `config_class`, so the two cannot disagree:

    class Perceiver(nn.Module):
        def __init__(self, adapter, num_latents: int = 512, ...):
            self.config = record(PerceiverConfig, locals())    # the values of this call

    PerceiverConfig = config_class(Perceiver)                  # fields num_latents: int = 512, ...
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

# Constructor arguments that are sub-modules built by the caller, not hyperparameters.
MODULE_ARGUMENTS = ("adapter", "queries")


def config_class(model: type, name: str | None = None, exclude: tuple[str, ...] = MODULE_ARGUMENTS) -> type:
    """A dataclass with one field per keyword argument of `model.__init__` (less `exclude`), with the same
    annotation and default (a list / dict default is copied per instance). Named `<Model>Config` by default."""
    fields = []
    for p in list(inspect.signature(model.__init__).parameters.values())[1:]:  # less self
        if p.name in exclude or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            fields.append((p.name, p.annotation))
        elif isinstance(p.default, (list, dict, set)):
            copy_default = lambda d=p.default: copy.deepcopy(d)  # noqa: E731
            fields.append((p.name, p.annotation, dataclasses.field(default_factory=copy_default)))
        else:
            fields.append((p.name, p.annotation, dataclasses.field(default=p.default)))
    cls = dataclasses.make_dataclass(name or f"{model.__name__}Config", fields)
    cls.__module__, cls.__qualname__ = model.__module__, cls.__name__
    cls.__doc__ = (
        f"The hyperparameters of {model.__name__}: its keyword arguments, derived from its signature "
        f"(see {model.__name__}'s Args)."
    )
    return cls


def declared_defaults(target: Callable) -> dict[str, Any]:
    """{name: default} of each parameter `target` declares a default for (a class: its `__init__`'s), so that another
    signature can take a default that means the same from this one declaration (`x: int = DEFAULTS["x"]`).

    Args:
        target: the function or class whose signature declares the defaults.
    """
    params = inspect.signature(target).parameters.values()
    return {p.name: p.default for p in params if p.default is not p.empty}


def record(config_cls: type, arguments: Mapping[str, Any]) -> Any:
    """An instance of `config_cls` from a constructor's arguments (`locals()` inside `__init__`)."""
    return config_cls(**{f.name: arguments[f.name] for f in dataclasses.fields(config_cls)})


def sizes(config: Any) -> dict[str, Any]:
    """The config's integer fields (annotated `int` or `int | None`): the sizes `check_sizes` checks."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.type in (int, "int", "int | None")}
