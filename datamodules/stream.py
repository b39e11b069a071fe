"""The stream: per rank and worker, raw samples of resampled (train) or exactly split (eval) shards, shuffled,
decoded and collated into batches.

The stream knows its data module only through a `StreamSource`: the settings it reads and the calls it makes,
written down in one place, so the stream and the data module can each be read alone.
"""

from __future__ import annotations

import itertools
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from datamodules.errors import DataError
from datamodules.sources import ShardOpenError, iter_tar_samples


@dataclass(frozen=True)
class StreamSource:
    """Everything a ShardStream reads from or does to its data module (`StreamingDataModule.stream_source`).

    The calls are bound methods of the data module: in a DataLoader worker they act on the worker's copy of it.

    Args:
        seed: base seed; each rank, worker and epoch derives its own shard, shuffle and augmentation streams.
        batch_size, num_workers, shuffle_buffer: as the data module's arguments.
        samples_per_epoch: training samples per epoch over all ranks (None for eval-only modules).
        skip_bad_shards, check_counts: as the data module's arguments.
        buffer_exts: extensions read as zero-copy views of a memory-mapped shard.
        start_worker: `(counter slot, augmentation rng)`, called once per worker and epoch before any sample.
        make_sample: `(raw, train, labels_optional)` -> a decoded sample, or None (corrupt: counted and warned).
        collate: samples -> a batch.
        corrupt: `(url, key, exc, evaluating, lost)`: count and warn about a sample lost in a broken shard.
        bad_shard: `(url, exc)`: count and warn about a shard skipped as unopenable.
        count_read: one eval sample read (the denominator of the eval skip report).
        read_file: raw samples of one file given as `predict_files`.
        trainer_epoch: the trainer's current epoch, or None without a trainer.
    """

    seed: int
    batch_size: int
    num_workers: int
    shuffle_buffer: int
    samples_per_epoch: int | None
    skip_bad_shards: bool
    check_counts: bool
    buffer_exts: tuple[str, ...]
    start_worker: Callable[[int, random.Random], None]
    make_sample: Callable[..., dict[str, Any] | None]
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    corrupt: Callable[..., None]
    bad_shard: Callable[[str, BaseException], None]
    count_read: Callable[[], None]
    read_file: Callable[[str], Iterator[dict[str, Any]]]
    trainer_epoch: Callable[[], int | None]


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def train_batches_per_worker(samples_per_epoch: int, batch_size: int, world: int, num_workers: int, worker: int) -> int:
    """Batches one worker yields per epoch: every rank gets samples_per_epoch // (world * batch_size) batches,
    spread over its workers (the first `rem` workers take one more), so DDP ranks stay in lockstep."""
    per_rank = samples_per_epoch // (world * batch_size)
    base, rem = divmod(per_rank, max(num_workers, 1))
    return base + (1 if worker < rem else 0)


class ShardStream(IterableDataset):
    """Yields collated batches. Train: endless resampled shards cut to a fixed epoch. Eval: one exact pass.

    The DataLoader runs it with batch_size=None; batching happens here, per worker, after the shuffle buffer.
    """

    def __init__(
        self,
        source: StreamSource,
        urls: list[str],
        train: bool,
        counts: dict[str, int] | None,
        labels_optional: bool = False,
        files: bool = False,
    ):
        self.source, self.urls, self.train, self.counts = source, urls, train, counts
        # predict: labels are optional (labels_optional), and the urls may be raw files instead of shards (files)
        self.labels_optional, self.files = labels_optional or files, files
        self.epoch = 0
        # rank and world are fixed in the main process (the loader sets them): a DataLoader worker may not
        # see the process group, and the trainer knows the world before torch.distributed is up
        self.rank, self.world = _rank_world()

    def __len__(self) -> int:  # batches on this rank: exact for train, and for eval when index.json has counts
        rank, world = self.rank, self.world
        bs = self.source.batch_size
        if self.train:
            return self.source.samples_per_epoch // (world * bs)
        if self.counts is None:
            raise TypeError("eval length unknown without an index.json")
        nw = max(self.source.num_workers, 1)
        return sum(math.ceil(sum(self.counts[u] for u in self._eval_urls(rank, world, w, nw)) / bs) for w in range(nw))

    def next_epoch(self) -> None:
        """Called in the main process before the workers copy the stream: the trainer's epoch makes a resumed run
        continue the same sequence; alone, count the passes."""
        epoch = self.source.trainer_epoch()
        self.epoch = epoch if epoch is not None else self.epoch + 1

    def _eval_urls(self, rank: int, world: int, worker: int, num_workers: int) -> list[str]:
        return self.urls[rank * num_workers + worker :: world * num_workers]

    def _samples(self, urls: Iterator[str] | list[str], exact: bool) -> Iterator[dict[str, Any]]:
        """Raw samples of `urls` in order; unopenable shards raise or are skipped; eval counts are checked."""
        src = self.source
        if self.files:
            from datamodules.files import iter_files

            yield from iter_files(urls, src.read_file, src.corrupt)
            return
        bad_in_a_row = 0  # shards in a row that gave no sample: unopenable, empty, or broken at the first member
        for url in urls:
            if bad_in_a_row > 2 * len(self.urls) + 10:
                raise DataError(
                    f"{bad_in_a_row} shards in a row gave no sample (unopenable, empty, or broken at "
                    f"their first member), the last {url!r}: check the shards and their URLs"
                )
            try:
                n = 0
                truncated = []

                def on_truncated(u: str, k: str, e: Exception, truncated: list = truncated) -> None:
                    truncated.append(e)
                    src.corrupt(u, k, e, exact, lost=True)

                for raw in iter_tar_samples(url, on_truncated, src.buffer_exts):
                    n += 1
                    yield raw  # still bytes: the shuffle buffer holds compressed samples, decode comes after
            except ShardOpenError as e:
                if not src.skip_bad_shards:
                    raise
                src.bad_shard(url, e)
                bad_in_a_row += 1
                continue
            bad_in_a_row = bad_in_a_row + 1 if n == 0 else 0
            if exact and src.check_counts and self.counts is not None and n != self.counts[url]:
                raise DataError(
                    f"shard {url!r} held {n} samples, index.json says {self.counts[url]}"
                    + (" (truncated tar)" if truncated else "")
                    + "; rewrite the shard or pass check_counts=False"
                )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        src = self.source
        rank, world = self.rank, self.world
        worker, num_workers = _worker()
        # epoch is set in the main process (next_epoch) before workers copy the dataset
        rng = random.Random(hash((src.seed, self.epoch, rank, worker)) & 0xFFFFFFFF)
        # int tuples hash the same in every process (str hashes are salted per process)
        src.start_worker(
            worker + 1 if get_worker_info() is not None else 0,
            random.Random(hash((src.seed, self.epoch, rank, worker, 1)) & 0xFFFFFFFF),
        )
        if self.train:
            n_batches = train_batches_per_worker(src.samples_per_epoch, src.batch_size, world, num_workers, worker)
            raw = _shuffle(self._samples(self._resampled(rng), exact=False), src.shuffle_buffer, rng)
            samples = _good(map(src.make_sample, raw, itertools.repeat(True)))
            for _ in range(n_batches):
                yield src.collate([next(samples) for _ in range(src.batch_size)])
            return
        if len(self.urls) < world * num_workers and not self.files:
            raise DataError(
                f"{len(self.urls)} eval shards for {world} ranks x {num_workers} workers: each worker "
                "needs at least one shard; write more, smaller shards (--maxcount) or lower num_workers"
            )
        batch: list[dict[str, Any]] = []
        urls = self._eval_urls(rank, world, worker, num_workers)
        seen = good = 0

        def make(raw: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal seen
            seen += 1
            src.count_read()  # eval samples read: the denominator of the skip report
            return src.make_sample(raw, False, self.labels_optional)

        for sample in _good(map(make, self._samples(urls, exact=True))):
            good += 1
            batch.append(sample)
            if len(batch) == src.batch_size:
                yield src.collate(batch)
                batch = []
        if batch:  # the last partial batch is kept: every sample is seen exactly once
            yield src.collate(batch)
        if seen and not good and not self.files:  # an evaluation that measured nothing must not pass for one
            where = repr(urls[0]) + (f" and {len(urls) - 1} more shards" if len(urls) > 1 else "")
            raise DataError(
                f"every one of the {seen} samples in {where} was corrupt: check the data module's "
                "input_exts, num_classes and transforms against the shards (see the warnings above)"
            )

    def _resampled(self, rng: random.Random) -> Iterator[str]:
        """Shards drawn with replacement, forever; a run of unopenable shards stops with an error."""
        while True:
            yield rng.choice(self.urls)


def _good(samples: Iterator[dict[str, Any] | None], limit: int = 1000) -> Iterator[dict[str, Any]]:
    """Drop the corrupt (None) samples; `limit` corrupt ones in a row means the data is wrong, not damaged."""
    bad = 0
    for s in samples:
        if s is None:
            bad += 1
            if bad >= limit:
                raise DataError(
                    f"{bad} corrupt samples in a row: check the data module's input_exts, "
                    "num_classes and transforms against the shards (see the warnings above)"
                )
            continue
        bad = 0
        yield s


def _shuffle(samples: Iterator[dict], bufsize: int, rng: random.Random, initial: int = 64) -> Iterator[dict]:
    """Shuffle buffer: starts yielding at `initial` samples, then grows (two in, one out) up to `bufsize`,
    so the first batch does not wait for a full buffer."""
    buf: list[dict] = []
    initial = min(initial, bufsize)
    for s in samples:
        buf.append(s)
        if len(buf) < bufsize:
            nxt = next(samples, None)
            if nxt is not None:
                buf.append(nxt)
        if len(buf) >= initial:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf
