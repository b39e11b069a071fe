"""The data errors: one line naming the pattern, shard or key, and what to do. No heavy imports (the shard
writers and the CLI may raise or catch them without loading torch or Lightning)."""

from __future__ import annotations

from typing import Any


class DataError(RuntimeError):
    """A data problem found before or while streaming: names the pattern, shard or key, and what to do."""


class LabelRangeError(DataError):
    """A label at or above num_classes: the configuration does not match the shards (not a damaged sample), so it
    stops the run instead of being skipped; skipping would measure every metric on a subset of the classes."""


def label_range_message(raw: dict[str, Any], error: LabelRangeError, split: str = "") -> str:
    return (
        f"{split + ' ' if split else ''}shard {raw.get('__url__', '?')!r} key {raw.get('__key__', '?')!r}: "
        f"{error}: set data.init_args.num_classes to the number of classes the shards hold (labels are "
        "0-based), or point the data module at the shards meant for this model"
    )
