"""Optional dependencies: a missing one is a one-line error naming the pip extra that installs it, not a traceback.

    require("trimesh", "perceiver-lit-shards synthetic pointcloud")   # raises MissingDependency when absent

Shared by every console script (`perceiver-lit*`); it lives here, not in perceiver_lit, because data modules never
import perceiver_lit (perceiver_lit may import datamodules). Availability is lightning_utilities' RequirementCache
(`module=`: the module must import, not only be listed as installed).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lightning_utilities.core.imports import RequirementCache

# import name -> the perceiver-lit extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRAS = {
    "trimesh": "media",
    "soundfile": "media",
    "av": "media",
    "decord": "media",
    "wandb": "wandb",
    "matplotlib": "sweep",
    "transformers": "hf",
    "safetensors": "hf",
    "onnx": "export",
    "onnxruntime": "export",
}


class MissingDependency(ModuleNotFoundError):
    """An optional package a command needs is not installed; the message says which extra to install."""

    def __init__(self, module: str, purpose: str) -> None:
        super().__init__(missing_message(module, purpose), name=module)


def missing_message(module: str, purpose: str | None = None) -> str:
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    fix = f"pip install 'perceiver-lit[{extra}]' (or pip install {top})" if extra else f"pip install {top}"
    return f"{purpose or 'this command'} needs the optional package `{top}`, which is not installed: {fix}"


def require(module: str, purpose: str) -> None:
    """Raise MissingDependency unless `module` imports. `purpose`: what needs it, e.g. the command line."""
    if not RequirementCache(module=module):
        raise MissingDependency(module, purpose)


@contextmanager
def one_line_missing(prog: str) -> Iterator[None]:
    """Around a console script's work: a ModuleNotFoundError of a known optional package (from `require`, or an
    unguarded import deep inside) exits with one line `<prog>: error: ...` (status 1) instead of a traceback."""
    try:
        yield
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top not in EXTRAS and "perceiver-lit[" not in str(e):  # not ours, and no install hint of its own
            raise
        message = str(e) if isinstance(e, MissingDependency) or top not in EXTRAS else missing_message(top, prog)
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
