"""WebDataset-streaming LightningDataModules for every modality the Perceiver reads.

`datamodules.ImageDataModule` etc. resolve lazily from the modality modules, so a config's `class_path` works
without importing every modality's dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

from datamodules.base import DataError, LogCorruptSamples, StreamingDataModule

_MODULES = ("image", "text", "pointcloud", "audio", "video", "audiovisual", "flow")

__all__ = ["DataError", "LogCorruptSamples", "StreamingDataModule"]


def __getattr__(name: str) -> Any:
    for mod in _MODULES:
        full = f"{__name__}.{mod}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name == full:
                continue
            raise
        if name in vars(module):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
