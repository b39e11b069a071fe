"""Batch buffers: shared-memory and reused batch memory, the pool behind it, pinned copies, and rows that samples
are decoded into so a batch needs no stacking copy."""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty batch tensor. In a DataLoader worker it lives in shared memory from the start, so sending the
    batch to the main process costs no extra copy (as torch's default_collate does); in the main process it
    reuses the memory of a batch nobody holds any more (`BufferPool`)."""
    if get_worker_info() is not None:  # made in shared memory, as default_collate does: share_memory_() copies
        storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
        return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
    return _POOL.empty(shape, dtype)


def scratch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor for an intermediate that never leaves this process (also in a worker): reused memory."""
    return _POOL.empty(shape, dtype)


_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int16: np.int16,
    torch.uint8: np.uint8,
    torch.int8: np.int8,
    torch.bool: np.bool_,
}


class BufferPool:
    """Large empty tensors whose memory is reused once no tensor, view or storage of it is left.

    Why: a batch written into fresh memory pays a page fault per 4 KB page on first write (the kernel maps and
    zeroes each one), and glibc hands freed blocks of batch size back to the kernel, so every batch was fresh
    memory: a 7.8 MB audio batch took 870 faults and 4.7 ms to fill (reused memory: 0.65 ms), a 77 MB video
    batch 18,800 faults: a large part of the audio and video loaders' overhead over bare decoding.

    How it knows a buffer is free: each loan is `torch.from_numpy` of a fresh numpy view of the pooled array,
    and a tensor made that way keeps its array alive for as long as any tensor, view or storage of it lives;
    the pool holds only a weak reference to the view, so a dead one means nothing can see the memory any more.
    """

    def __init__(self, keep: int = 4, min_bytes: int = 1 << 20):
        self.keep, self.min_bytes = keep, min_bytes
        self.entries: list[tuple[np.ndarray, weakref.ref]] = []  # (pooled array, the view lent out), oldest first

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        np_dtype = _NUMPY_DTYPES.get(dtype)
        if np_dtype is None or math.prod(shape) * dtype.itemsize < self.min_bytes:
            return torch.empty(shape, dtype=dtype)
        shape = tuple(shape)
        for i, (array, lent) in enumerate(self.entries):
            if lent() is None and array.shape == shape and array.dtype == np_dtype:
                del self.entries[i]
                return self._lend(array)
        if len(self.entries) >= self.keep:  # forget the oldest free buffer, else the oldest (its holders keep it)
            free = [i for i, (_, lent) in enumerate(self.entries) if lent() is None]
            del self.entries[free[0] if free else 0]
        return self._lend(np.empty(shape, np_dtype))

    def _lend(self, array: np.ndarray) -> torch.Tensor:
        view = array.view()
        self.entries.append((array, weakref.ref(view)))
        return torch.from_numpy(view)


_POOL = BufferPool()  # per process; workers use it for scratch_buffer only (their batches are shared memory)


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack into a batch_buffer."""
    out = batch_buffer((len(tensors), *tensors[0].shape), tensors[0].dtype)
    return torch.stack(tensors, out=out)


def pin_device() -> str | None:
    """The accelerator that batches can be pinned for ("cuda", ...), or None where pinning is impossible: a
    CPU-only build, or MPS (the DataLoader's own rule, torch.utils.data.dataloader)."""
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is None:
        return "cuda" if torch.cuda.is_available() else None
    if not accelerator.is_available():
        return None
    acc = accelerator.current_accelerator()
    return None if acc is None or acc.type == "mps" else acc.type


def _pinned(batch: Any) -> Any:
    """A copy of `batch` with every tensor (also inside dicts) in pinned memory; other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: _pinned(v) for k, v in batch.items()}
    return batch


class BatchRows:
    """Rows of a batch-sized buffer that samples are decoded into, so the batch needs no stacking copy.

    `next(rows, shape)` is the row for the next sample (a fresh `alloc`ated buffer of `rows` rows when the current one
    is used up, has another shape, or was made in another process); `commit(row)` marks it taken once the sample
    decoded (a sample that raises leaves its row for the next one). `take(tensors)` retires the buffer and
    returns its first `len(tensors)` rows as the batch when `tensors` are exactly those rows in order, else None
    (the caller then stacks as usual: a permuted sample, or one dropped after its decode for a bad label). A
    buffer is never written again once retired (batch_buffer reuses memory only once nothing refers to it), so a
    batch and its samples stay valid.
    """

    def __init__(self, alloc: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] = batch_buffer) -> None:
        self.alloc = alloc  # batch_buffer for rows that are the batch, scratch_buffer for an intermediate
        self.buffer: torch.Tensor | None = None
        self.rows: tuple[torch.Tensor, ...] = ()  # the buffer's row views, made in one call; handed out in order
        self.used, self.pid = 0, -1

    def __getstate__(self) -> dict[str, Any]:  # a worker process starts with no buffer
        return {"alloc": self.alloc, "buffer": None, "rows": (), "used": 0, "pid": -1}

    def next(self, rows: int, shape: tuple[int, ...]) -> torch.Tensor:
        if (
            self.buffer is None
            or self.used >= len(self.rows)
            or self.pid != os.getpid()
            or self.buffer.shape[1:] != tuple(shape)
        ):
            self.buffer, self.used, self.pid = self.alloc((rows, *shape), torch.float32), 0, os.getpid()
            self.rows = self.buffer.unbind(0)
        return self.rows[self.used]

    def commit(self, row: torch.Tensor) -> torch.Tensor:
        if self.used < len(self.rows) and row is self.rows[self.used]:
            self.used += 1
        return row

    def take(self, tensors: list[torch.Tensor]) -> torch.Tensor | None:
        buffer, rows, self.buffer, self.rows = self.buffer, self.rows, None, ()
        if buffer is None or not 0 < len(tensors) <= self.used or self.pid != os.getpid():
            return None
        if any(t is not row for t, row in zip(tensors, rows)):
            return None
        return buffer[: len(tensors)]
