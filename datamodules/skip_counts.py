"""Counting what the stream skips: corrupt samples and unreadable shards, per DataLoader worker in shared memory
so the training process reads what its workers counted, with one warning per sample or shard and worker."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("datamodules")


class SkipCounts:
    """The skip counters of one data module (on one rank).

    One counter slot per DataLoader worker (+ slot 0 for the main process; `slot` is set per worker and epoch by
    the stream), rows [corrupt (train + eval), bad shards, eval corrupt, eval samples read].
    """

    def __init__(self) -> None:
        self.counters = torch.zeros(4, 65, dtype=torch.int64).share_memory_()
        self.slot = 0
        self.warned: set[tuple[str, str | None]] = set()

    @property
    def corrupt_samples(self) -> int:
        return int(self.counters[0].sum())

    @property
    def bad_shards(self) -> int:
        return int(self.counters[1].sum())

    @property
    def eval_counts(self) -> tuple[int, int]:
        return int(self.counters[2].sum()), int(self.counters[3].sum())

    def corrupt(self, url: str, key: str, exc: BaseException, evaluating: bool = False, lost: bool = False) -> None:
        """Count and warn about one skipped sample; `evaluating`: in an eval pass, `lost`: never decoded (a tar
        that broke in it), so not yet counted as read."""
        slot = min(self.slot, 64)
        self.counters[0, slot] += 1
        if evaluating:
            self.counters[2, slot] += 1
            self.counters[3, slot] += int(lost)
        if (url, key) in self.warned:  # resampled shards meet the same bad sample again: warn once per worker
            return
        self.warned.add((url, key))
        log.warning("corrupt sample skipped: shard=%s key=%s: %s: %s", url, key, type(exc).__name__, exc)

    def bad_shard(self, url: str, exc: BaseException) -> None:
        self.counters[1, min(self.slot, 64)] += 1
        if (url, None) in self.warned:  # resampled: the same shard again; warn once per worker
            return
        self.warned.add((url, None))
        log.warning("unreadable shard skipped (skip_bad_shards=True): %s", exc)

    def count_read(self) -> None:
        self.counters[3, min(self.slot, 64)] += 1
