"""WebDataset-streaming LightningDataModules for every modality the Perceiver reads.

`datamodules.ImageDataModule` etc. resolve lazily from the modality modules, so a config's `class_path` works
without importing every modality's dependencies; `DataError` and `StreamingDataModule` resolve lazily too, so the
shard writers (`import datamodules.shards.writer`) load neither torch nor Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"DataError": "errors", "StreamingDataModule": "streaming"}
_MODULES = ("image", "text", "pointcloud", "audio", "video", "audiovisual", "flow")

__all__ = ["DataError", "StreamingDataModule"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    for mod in _MODULES:
        module = importlib.import_module(f"{__name__}.{mod}")
        if name in vars(module):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
