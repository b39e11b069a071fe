"""One fixed, seeded permutation of input elements (docs/architecture.md "Permuted inputs").

`perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))` over the n elements of a sample, in
row-major order of the element grid. An element is one position of the leading `element_dims` dims (a pixel of
an (H, W, C) image, a point of (N, 3), a byte of (L,), a time-frequency bin of an (F, M) mel grid with
element_dims=2), or a block of `block` positions per grid dim (raw audio: block=patch; video: block=(t, h, w)).
Trailing dims (channels) travel with their element. The sample keeps its shape.

The permutation depends only on (n, seed), so it is the same in every epoch, worker and rank, and the adapter
given the same seed reorders its position features with the same `perm`.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=32)
def permutation(n: int, seed: int) -> torch.Tensor:
    """The fixed permutation of n elements for `seed` (int64 (n,)); cached per worker."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def permute_elements(
    x: Any, seed: int | None, *, element_dims: int | None = None, block: int | tuple[int, ...] = 1
) -> Any:
    """Permute the elements (or blocks of elements) of one sample; dicts are permuted per value.

    x: a Tensor (*grid, *channels) or numpy array. element_dims: how many leading dims form the grid (default:
    all but the last for ndim > 1, else 1). block: block size per grid dim (an int applies to every grid dim).
    """
    if seed is None:
        return x
    if isinstance(x, dict):
        return {k: permute_elements(v, seed, element_dims=element_dims, block=block) for k, v in x.items()}
    t = torch.as_tensor(x)
    g = element_dims if element_dims is not None else (t.ndim - 1 if t.ndim > 1 else 1)
    grid, chans = tuple(t.shape[:g]), tuple(t.shape[g:])
    blocks = (block,) * g if isinstance(block, int) else tuple(block)
    if len(blocks) != g:
        raise ValueError(f"permute_block {block} must give one size per grid dim of {grid}")
    if any(s % b for s, b in zip(grid, blocks)):
        raise ValueError(f"grid {grid} not divisible by permute_block {blocks}")
    counts = [s // b for s, b in zip(grid, blocks)]
    n = math.prod(counts)
    if all(b == 1 for b in blocks):  # fast path: plain elements
        return t.reshape(n, *chans)[permutation(n, seed)].reshape(t.shape)
    # (c1, b1, c2, b2, ..., *chans) -> (c1, c2, ..., b1, b2, ..., *chans): block index first, row-major
    split = [d for c, b in zip(counts, blocks) for d in (c, b)]
    y = t.reshape(*split, *chans)
    order = [2 * i for i in range(g)] + [2 * i + 1 for i in range(g)] + list(range(2 * g, 2 * g + len(chans)))
    y = y.permute(order).reshape(n, *blocks, *chans)[permutation(n, seed)]
    y = y.reshape(*counts, *blocks, *chans)
    inverse = [i // 2 if i % 2 == 0 else g + i // 2 for i in range(2 * g)] + list(range(2 * g, 2 * g + len(chans)))
    return y.permute(inverse).reshape(t.shape).contiguous()
