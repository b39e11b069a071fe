"""The links from data facts to model arguments (docs/architecture.md, "Facts a data module states").

`data.num_classes -> model.init_args.net.init_args.num_classes` (and the task's `num_classes`),
`data.input_shape -> ...adapter.init_args.input_shape`, `data.permute_seed -> ...adapter.init_args.permute_seed` and
`data.class_names -> model.init_args.class_names`: jsonargparse links applied when the data module is instantiated.
A link is added only where the configured task / net / adapter takes that argument (`plan_links`, from the class
paths `prescan` finds); a value the user wrote that contradicts the data fails, naming both fields (`_fact`).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser

NET = "model.init_args.net"
ADAPTER = f"{NET}.init_args.adapter"


def _deep_merge(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(tree.get(k), dict):
            tree[k] = {}
        tree = tree[k]
    tree[keys[-1]] = value


def get_dotted(tree: Any, dotted: str, default: Any = None) -> Any:
    for k in dotted.split("."):
        if not isinstance(tree, dict) or k not in tree:
            return default
        tree = tree[k]
    return tree


def prescan(argv: list[str]) -> tuple[dict, list[str]]:
    """Best-effort read of the config files and `--model.*`/`--data.*` overrides in argv, before parsing.

    jsonargparse needs to know which links to add before it parses, and links depend on which net and adapter the
    config chose; this finds their class paths (and any values the user wrote for linked fields).
    Returns (merged config tree, config file paths).
    """
    # Why not jsonargparse's own parse (4.x, read in its _link_arguments.py): (1) a link must be on the parser before
    # parsing (link_arguments clears the target's `required` and registers it in the subclass action's
    # `linked_targets`, which the nested class parsers read while parsing), yet which links fit depends on the class
    # paths the config chooses; jsonargparse has no link conditional on the chosen subclass, and a first parse
    # without the links fails on the required linked arguments (net num_classes, adapter input_shape) unless
    # validation is turned off through the private `_skip_validation`. (2) A link's compute_fn sees only its source
    # (the data module), never the value the config wrote for the target, so the contradiction check needs that value
    # from here. Best effort: what this cannot read leaves the default links, and the real parse reports the error.
    tree: dict = {}
    configs: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, value = (arg.split("=", 1) + [None])[:2] if arg.startswith("-") else (None, None)
        if key is not None and value is None and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 1
        i += 1
        if key in ("--config", "-c") and value is not None:
            configs.append(value)
            try:
                loaded = yaml.safe_load(Path(value).read_text()) if os.path.isfile(value) else yaml.safe_load(value)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(loaded, dict):
                _deep_merge(tree, loaded)
        elif key is not None and key.startswith(("--model.", "--data.")) and value is not None:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            _set_dotted(tree, key[2:], parsed)
    return tree, configs


def _import(class_path: Any) -> type | None:
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _accepts(cls: type | None, arg: str, default: bool = True) -> bool:
    """Whether cls.__init__ takes `arg`; `default` when the class is unknown (the architecture's contract)."""
    if cls is None:
        return default
    if not inspect.isclass(cls):  # a factory function (e.g. a preset) given as class_path
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            return default
        return arg in params
    for klass in inspect.getmro(cls):  # **kwargs pass arguments on to a parent's __init__
        try:
            params = inspect.signature(klass.__init__).parameters
        except (TypeError, ValueError):
            return default
        if arg in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    return value


# Facts a data module may lack (the target keeps its own value then); "video.mean" is data.video.mean.
OPTIONAL_FACTS = ("class_names", "video.mean", "video.std")
LABELLED_SHAPE = "input_shape+label"  # input_shape plus {"label": (num_classes,)}


def _fact(attr: str, target: str, user_value: Any) -> Callable[[Any], Any]:
    """compute_fn for a link: read `data.<attr>`; fail if the user's value for `target` says otherwise."""

    def compute(data: Any) -> Any:
        if attr in OPTIONAL_FACTS:  # optional: data without it leaves the task's (or its checkpoint's) value
            value = data
            for part in attr.split("."):
                value = getattr(value, part, None)
            value = tuple(value) if isinstance(value, list) and attr != "class_names" else value
            if value is None or attr == "class_names":
                return user_value if value is None else value
        elif attr == LABELLED_SHAPE:  # the label is an input too (MultimodalAutoencoding): its one-hot width
            value = {**dict(data.input_shape), "label": (int(data.num_classes),)}
        elif not hasattr(data, attr):
            raise ValueError(f"data ({type(data).__name__}) has no `{attr}` fact, needed for {target}")
        else:
            value = getattr(data, attr)
        if user_value is not None and _normalise(user_value) != _normalise(value):
            raise ValueError(
                f"{target}={user_value!r} contradicts data.{attr}={value!r} ({type(data).__name__}); the CLI links "
                f"it from the data module: remove it from the config, or change the data settings"
            )
        return value

    return compute


def plan_links(tree: dict) -> list[tuple[str, str]]:
    """(data attribute, model target) links that fit the configured net and adapter."""
    task_cls = _import(get_dotted(tree, "model.class_path"))
    net_cls = _import(get_dotted(tree, f"{NET}.class_path"))
    adapter_cls = _import(get_dotted(tree, f"{ADAPTER}.class_path"))
    links = []
    if task_cls is not None and _accepts(task_cls, "class_names", default=False):
        links.append(("class_names", "model.init_args.class_names"))
    classes = getattr(task_cls, "links_num_classes", True)  # dense-output tasks (OpticalFlow) have no classes
    if classes and _accepts(task_cls, "num_classes"):
        links.append(("num_classes", "model.init_args.num_classes"))
    if task_cls is not None and _accepts(task_cls, "video_mean", default=False):  # the video normalisation
        links += [("video.mean", "model.init_args.video_mean"), ("video.std", "model.init_args.video_std")]
    shape_fact = LABELLED_SHAPE if getattr(task_cls, "label_input", False) else "input_shape"
    if get_dotted(tree, f"{NET}") is not None or net_cls is None:
        if classes and _accepts(net_cls, "num_classes"):
            links.append(("num_classes", f"{NET}.init_args.num_classes"))
        if _accepts(net_cls, "adapter") and (net_cls is None or get_dotted(tree, ADAPTER) is not None):
            if _accepts(adapter_cls, "input_shape"):
                links.append((shape_fact, f"{ADAPTER}.init_args.input_shape"))
            if _accepts(adapter_cls, "permute_seed"):
                links.append(("permute_seed", f"{ADAPTER}.init_args.permute_seed"))
        elif net_cls is not None:  # nets without an adapter (e.g. a ConvNet baseline) may take the facts directly
            for attr in ("input_shape", "permute_seed"):
                if _accepts(net_cls, attr, default=False):
                    links.append((attr, f"{NET}.init_args.{attr}"))
    return links


def link_data_facts(parser: ArgumentParser, tree: dict) -> None:
    """Add the links `plan_links` chooses for the config `tree` (from `prescan`) to a subcommand's parser."""
    for attr, target in plan_links(tree):
        parser.link_arguments(
            "data", target, compute_fn=_fact(attr, target, get_dotted(tree, target)), apply_on="instantiate"
        )
