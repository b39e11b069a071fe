"""The loader: a DataLoader that mixes samples across consecutive batches from different workers (the cross-worker
shuffle) and decides who pins the batches; and how its workers start."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from datamodules.buffers import _pinned, pin_device
from datamodules.stream import ShardStream


def pin_plan(pin_memory: bool, mix: int, device: str | None) -> tuple[bool, bool]:
    """Who pins the batches: (the DataLoader's pin thread, the cross-worker mix).

    The mix re-stacks every batch into new memory, so pinning before it is wasted work and pinning only there
    keeps the batches the trainer gets pinned. Nobody pins with pin_memory off or without a `device`."""
    if not pin_memory or device is None:
        return False, False
    return mix <= 1, mix > 1


class MixingLoader(DataLoader):
    """A DataLoader that mixes samples across `mix` consecutive batches (which come from different workers),
    the cross-worker shuffle. Batch count and size are unchanged, so per-rank step counts stay exact.

    `pin_memory` pins the batches the loader yields: with mixing on, the mix writes them straight into pinned
    memory and the DataLoader does not pin (see `pin_plan`)."""

    def __init__(self, *args: Any, mix: int = 1, mix_seed: int = 0, pin_memory: bool = False, **kwargs: Any):
        device = pin_device()
        if pin_memory and device is None:
            warnings.warn(
                "pin_memory=True but no accelerator that supports pinned memory is available: batches are not pinned",
                stacklevel=2,
            )
        loader_pins, self.pin_mixed = pin_plan(pin_memory, mix, device)
        super().__init__(*args, pin_memory=loader_pins, **kwargs)
        self.mix, self._gen = mix, torch.Generator().manual_seed(mix_seed)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if isinstance(self.dataset, ShardStream):  # set before the workers copy the dataset
            self.dataset.next_epoch()
        it = super().__iter__()
        if self.mix <= 1:
            yield from it
            return
        while True:
            group = [b for _, b in zip(range(self.mix), it)]
            if not group:
                return
            if len(group) == 1:
                yield _pinned(group[0]) if self.pin_mixed else group[0]
                continue
            yield from _mix(group, self._gen, pin=self.pin_mixed)


def _mix(group: list[dict[str, Any]], gen: torch.Generator, pin: bool = False) -> list[dict[str, Any]]:
    """Re-deal the samples of `group` (batches) into batches of the same sizes, in a random order.
    Each sample row is copied once (no cat-then-index double copy); with `pin`, into pinned memory.

    The pinned batches come from torch's pinned-memory allocator, never from `BufferPool`: that allocator
    reuses a freed block only after the asynchronous (non_blocking) copies recorded on it have finished, while
    the pool would hand the memory to the next batch as soon as the last Python reference is gone."""
    sizes = [len(b["key"]) for b in group]
    perm = torch.randperm(sum(sizes), generator=gen).tolist()
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]

    def stack_rows(rows: list[torch.Tensor]) -> torch.Tensor:
        if not pin:
            return torch.stack(rows)
        out = torch.empty((len(rows), *rows[0].shape), dtype=rows[0].dtype, pin_memory=True)
        return torch.stack(rows, out=out)

    def deal(values: list[Any]) -> list[Any]:
        if isinstance(values[0], dict):
            parts = {k: deal([v[k] for v in values]) for k in values[0]}
            return [{k: parts[k][i] for k in parts} for i in range(len(sizes))]
        rows = [row for v in values for row in (v.unbind(0) if isinstance(v, torch.Tensor) else v)]
        picked = [[rows[p] for p in perm[bounds[i] : bounds[i + 1]]] for i in range(len(sizes))]
        return [stack_rows(r) for r in picked] if isinstance(values[0], torch.Tensor) else picked

    parts = {k: deal([b[k] for b in group]) for k in group[0]}
    return [{k: parts[k][i] for k in parts} for i in range(len(group))]


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    """The loader's collate_fn: ShardStream yields finished batches (torch's default for batch_size=None,
    `default_convert`, walks every key string of every batch looking for numpy arrays)."""
    return batch


def _worker_context() -> Any:
    """How DataLoader workers start. fork on Linux (milliseconds, no re-import of torch + Lightning), except once
    torch.distributed is up: then the rank has gloo/NCCL threads, and a fork taken while one of them holds a lock
    leaves the worker deadlocked on that lock forever (seen here: a rank waiting on a worker stuck in a futex).
    forkserver forks workers from a clean single-threaded server that has torch preloaded."""
    if sys.platform != "linux":
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        import multiprocessing

        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "datamodules.streaming"])
        return ctx
    return "fork"
