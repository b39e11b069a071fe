"""Class names next to the shards: one file, `classes.json`, a JSON list of names (index = position).

Every writer records it with `write_class_names(out_dir, names)`; a data module reads it with
`find_class_names(...)` from the folder of its first local shard, so `datamodule.class_names` is known after
`__init__` (the CLI links it into the task, which saves it in the checkpoint's hyperparameters).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

log = logging.getLogger("datamodules")

CLASSES_NAME = "classes.json"


def write_class_names(out_dir: str | os.PathLike, names: Sequence[str]) -> str | None:
    """Write `names` to out_dir/classes.json (nothing for an empty list: unlabelled data). Returns the path."""
    names = [str(n) for n in names]
    if not names:
        return None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, CLASSES_NAME)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(names, f, indent=1, ensure_ascii=False)
    return path


def read_class_names(path: str | os.PathLike) -> list[str]:
    """The names in a classes.json; a ValueError naming the file when it is not a JSON list of strings."""
    with open(path, encoding="utf-8") as f:
        try:
            names = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e}); expected a list of class names") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: expected a JSON list of class names (strings)")
    return names


def find_class_names(specs: Sequence[str | Sequence[str] | None], num_classes: int | None) -> list[str] | None:
    """Class names from classes.json beside the first local shard of the first spec that has one.

    Args:
        specs: shard URL specs (brace patterns, lists, '::'-joined), tried in order.
        num_classes: the data module's class count; names of another length are ignored with a warning.
    """
    from braceexpand import braceexpand

    for spec in specs:
        if spec is None:
            continue
        patterns = spec.split("::") if isinstance(spec, str) else list(spec)
        for pattern in patterns:
            first = next(iter(braceexpand(pattern)), "")
            if first.startswith("pipe:") or ("://" in first and not first.startswith("file://")):
                continue
            path = os.path.join(os.path.dirname(first.removeprefix("file://")), CLASSES_NAME)
            if not os.path.isfile(path):
                continue
            names = read_class_names(path)
            if num_classes is not None and len(names) != num_classes:
                log.warning(
                    "%s names %d classes but num_classes=%d: class names not used", path, len(names), num_classes
                )
                return None
            return names or None
    return None
