"""Argument checks shared by every model, adapter, query provider and layer: one helper, one message format.

A size of 0 or below does not fail where it is given: torch builds empty tensors and the run dies later inside a
reshape or a kernel, far from the argument. So each constructor checks its sizes first::

    check_sizes("Perceiver", num_latents=num_latents, latent_dim=latent_dim)           # each >= 1
    check_sizes("ImageAdapter", minimum=0, num_frequency_bands=num_frequency_bands)     # 0 bands: raw positions
"""

from __future__ import annotations

import numbers
from typing import Any


class SizeError(ValueError):
    """A size argument below its minimum; `owner` (class name) and `name` (argument) let the CLI name the field."""

    def __init__(self, owner: str, name: str, message: str):
        super().__init__(f"{owner}: {message}")
        self.owner, self.name, self.message = owner, name, message


def check_sizes(owner: str, minimum: int = 1, **sizes: Any) -> None:
    """Raise SizeError (a ValueError) naming `owner` and the argument of the first size below `minimum`.

    Args:
        owner: the class whose argument it is ("Perceiver"); the message reads "Perceiver: num_latents must be
            >= 1, got 0".
        minimum: the smallest allowed value.
        **sizes: argument name -> value. None (a default chosen later) is skipped; a sequence (input_shape,
            patch_size) has each of its elements checked.
    """
    for name, value in sizes.items():
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
                got = f"{tuple(value)}" if isinstance(value, (list, tuple)) else repr(value)
                what = f"every entry of {name}" if isinstance(value, (list, tuple)) else name
                raise SizeError(owner, name, f"{what} must be an integer >= {minimum}, got {got}")
