"""The streaming DataModule every modality builds on: URLs, resampled training, exact eval, safe decoding.

How a modality plugs in (see image.py for a complete, short example)::

    class MyDataModule(StreamingDataModule):
        input_exts = ("npy",)                 # extensions that may hold the input; nothing else is ever read

        def __init__(self, my_option: int = 1, **kwargs):
            super().__init__(**kwargs)        # base args: urls, batch_size, num_workers, num_classes, ...
            self.input_shape = (1024, 3)      # per-sample shape of batch["inputs"] (a fact, set in __init__)

        def decode_inputs(self, sample, train):   # sample: {"__key__", "__url__", ext: bytes}
            x = ...                           # decode sample[ext] for one ext in input_exts, then transform
            return torch.as_tensor(x)         # a Tensor, or a dict of Tensors (multimodal)

A subclass may also override `permute_inputs` (how `permute_seed` applies; default: elements of the flattened
leading dims, see transforms/permute.py), `decode_target` (default: `cls` or `json`) and `extra_fields` (text
adds `pad_mask`). Everything else (sharding, shuffling, batching, corrupt-sample handling, DDP) lives here.

A sample that fails to decode (truncated image, bad npy, missing label or input) raises inside `decode_inputs` /
`decode_target`; the base catches it, logs ONE warning line naming shard and key, counts it
(`self.corrupt_samples`) and goes on. Nothing is ever unpickled: shards are read as raw bytes and only the
subclass's `input_exts` plus `cls`/`json` are looked at.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import re
import sys
import tarfile
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from braceexpand import braceexpand
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.tarstream import NotATarError, first_header_problem, iter_file_members, iter_members

log = logging.getLogger("datamodules")

INDEX_NAME = "index.json"  # written by perceiver-lit-shards next to the shards: {"shards": {basename: count}}
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's convention: key = path up to the first dot


class DataError(RuntimeError):
    """A data problem found before or while streaming: names the pattern, shard or key, and what to do."""


class LabelRangeError(DataError):
    """A label at or above num_classes: the configuration does not match the shards (not a damaged sample), so it
    stops the run instead of being skipped; skipping would measure every metric on a subset of the classes."""


# --------------------------------------------------------------------------------------------------------- URLs
def is_local(url: str) -> bool:
    """Local file paths (and file: URLs) can be checked and counted at setup; pipe:/http(s)/s3 cannot."""
    return not url.startswith("pipe:") and ("://" not in url or url.startswith("file://"))


def expand_urls(spec: str | Sequence[str] | None, check: bool = True) -> list[str]:
    """Brace-expand one pattern, a '::'-separated string of patterns, or a list of them.

    With `check`, every local path must exist; the error names the pattern that matched nothing.
    """
    if spec is None:
        return []
    patterns = spec.split("::") if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for pattern in patterns:
        expanded = list(braceexpand(pattern))
        if check:
            local = [u.removeprefix("file://") for u in expanded if is_local(u)]
            missing = [u for u in local if not os.path.isfile(u)]
            if local and len(missing) == len(local):
                raise DataError(f"shard pattern {pattern!r} matches no file (checked {len(local)} paths)")
            if missing:
                raise DataError(f"shard pattern {pattern!r}: {len(missing)} of {len(local)} files missing, "
                                f"first {missing[0]!r}")
        urls.extend(expanded)
    return urls


def read_index_counts(urls: Sequence[str], field: str = "shards") -> dict[str, int] | None:
    """Sample count per url from the writers' index.json next to each shard; None if any is unknown.
    `field="max_label"`: the largest class index in each shard instead (written since the writers record it)."""
    counts: dict[str, int] = {}
    cache: dict[str, dict] = {}
    for url in urls:
        if not is_local(url):
            return None
        path = url.removeprefix("file://")
        index_path = os.path.join(os.path.dirname(path), INDEX_NAME)
        if index_path not in cache:
            if not os.path.isfile(index_path):
                return None
            with open(index_path) as f:
                cache[index_path] = json.load(f).get(field, {})
        n = cache[index_path].get(os.path.basename(path))
        if n is None:
            return None
        counts[url] = int(n)
    return counts


# ------------------------------------------------------------------------------------------------ shard reading
class ShardOpenError(DataError):
    """A shard that cannot be opened at all (missing, no permission, a failing pipe: command, not a tar)."""


def iter_tar_samples(url: str, on_truncated: Callable[[str, str, Exception], None],
                     view_exts: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """Yield {"__key__", "__url__", ext: raw bytes} per sample of one tar shard, in stream order.

    A local uncompressed shard is memory-mapped; its members with an extension in `view_exts` (>= 64 KiB) come
    as zero-copy memoryviews (see tarstream.iter_file_members). Other sources (pipe:, http, gzip) are streamed.

    Raises ShardOpenError when the shard cannot be opened or its first header is unreadable. A shard that breaks
    later (truncated member) calls `on_truncated(url, last_key, exc)` and stops: the rest is unreadable.
    """
    import webdataset as wds  # gopen knows pipe:, http(s) via curl, s3 via aws, gs via gsutil, local paths

    local = "://" not in url and not url.startswith(("pipe:", "file:"))
    try:
        if local:
            stream, members = None, iter_file_members(url, view_exts)
        else:
            stream = wds.gopen(url, "rb", bufsize=1 << 16)
            members = iter_members(stream)
    except Exception as e:  # noqa: BLE001 - any opening failure becomes one clear error
        raise ShardOpenError(f"cannot open shard {url!r}: {type(e).__name__}: {e}") from e
    current: dict[str, Any] | None = None
    key = "<after the last complete member>"
    read_to_end = False
    try:
        try:
            for name, data in members:
                m = _KEY_RE.match(name)
                if m is None or name.rpartition("/")[2].startswith("__"):  # the basename
                    continue
                key, ext = m.group(1), m.group(2).lower()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
                key = "<after the last complete member>"
        except NotATarError as e:
            raise ShardOpenError(f"cannot open shard {url!r}: {e}") from e
        except (tarfile.TarError, EOFError, OSError) as e:
            m = _KEY_RE.match(getattr(e, "member", None) or "")
            if m is not None:  # the member the stream broke in
                key = m.group(1)
            elif current is not None:
                key = current["__key__"]
            on_truncated(url, key, e)
            return  # the sample being read when the stream broke is dropped with the rest of the shard
        if current is not None:
            yield current
        read_to_end = True
    finally:
        members.close()
        if stream is not None and hasattr(stream, "close"):
            try:
                stream.close()  # a `pipe:` source reports its command's exit status here
            except OSError as e:
                # After a complete read, a failed command (curl, aws s3 cp ... cut off) is a damaged shard: count
                # it and go on. Otherwise an error is already on its way, or the reader stopped early.
                if read_to_end:
                    on_truncated(url, key, e)


# -------------------------------------------------------------------------------------------- the dataset itself
def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def train_batches_per_worker(samples_per_epoch: int, batch_size: int, world: int, num_workers: int,
                             worker: int) -> int:
    """Batches one worker yields per epoch: every rank gets samples_per_epoch // (world * batch_size) batches,
    spread over its workers (the first `rem` workers take one more), so DDP ranks stay in lockstep."""
    per_rank = samples_per_epoch // (world * batch_size)
    base, rem = divmod(per_rank, max(num_workers, 1))
    return base + (1 if worker < rem else 0)


class ShardStream(IterableDataset):
    """Yields collated batches. Train: endless resampled shards cut to a fixed epoch. Eval: one exact pass.

    The DataLoader runs it with batch_size=None; batching happens here, per worker, after the shuffle buffer.
    """

    def __init__(self, dm: StreamingDataModule, urls: list[str], train: bool, counts: dict[str, int] | None,
                 labels_optional: bool = False, files: bool = False):
        self.dm, self.urls, self.train, self.counts = dm, urls, train, counts
        # predict: labels are optional (labels_optional), and the urls may be raw files instead of shards (files)
        self.labels_optional, self.files = labels_optional or files, files
        self.epoch = 0
        # rank and world are fixed in the main process (the loader sets them): a DataLoader worker may not
        # see the process group, and the trainer knows the world before torch.distributed is up
        self.rank, self.world = _rank_world()

    def __len__(self) -> int:  # batches on this rank: exact for train, and for eval when index.json has counts
        rank, world = self.rank, self.world
        bs = self.dm.batch_size
        if self.train:
            return self.dm.samples_per_epoch // (world * bs)
        if self.counts is None:
            raise TypeError("eval length unknown without an index.json")
        nw = max(self.dm.num_workers, 1)
        return sum(math.ceil(sum(self.counts[u] for u in self._eval_urls(rank, world, w, nw)) / bs)
                   for w in range(nw))

    def _eval_urls(self, rank: int, world: int, worker: int, num_workers: int) -> list[str]:
        return self.urls[rank * num_workers + worker :: world * num_workers]

    def _samples(self, urls: Iterator[str] | list[str], exact: bool) -> Iterator[dict[str, Any]]:
        """Raw samples of `urls` in order; unopenable shards raise or are skipped; eval counts are checked."""
        dm = self.dm
        if self.files:
            from datamodules.files import iter_files

            yield from iter_files(dm, urls)
            return
        bad_in_a_row = 0  # shards in a row that gave no sample: unopenable, empty, or broken at the first member
        for url in urls:
            if bad_in_a_row > 2 * len(self.urls) + 10:
                raise DataError(f"{bad_in_a_row} shards in a row gave no sample (unopenable, empty, or broken at "
                                f"their first member), the last {url!r}: check the shards and their URLs")
            try:
                n = 0
                truncated = []

                def on_truncated(u: str, k: str, e: Exception) -> None:
                    truncated.append(e)
                    dm._corrupt(u, k, e, exact, lost=True)

                for raw in iter_tar_samples(url, on_truncated, dm.buffer_exts):
                    n += 1
                    yield raw  # still bytes: the shuffle buffer holds compressed samples, decode comes after
            except ShardOpenError as e:
                if not dm.skip_bad_shards:
                    raise
                dm._bad_shard(url, e)
                bad_in_a_row += 1
                continue
            bad_in_a_row = bad_in_a_row + 1 if n == 0 else 0
            if exact and dm.check_counts and self.counts is not None and n != self.counts[url]:
                raise DataError(f"shard {url!r} held {n} samples, index.json says {self.counts[url]}"
                                + (" (truncated tar)" if truncated else "")
                                + "; rewrite the shard or pass check_counts=False")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        dm = self.dm
        rank, world = self.rank, self.world
        worker, num_workers = _worker()
        dm._worker_slot = worker + 1 if get_worker_info() is not None else 0
        # epoch is set in the main process (MixingLoader) before workers copy the dataset
        rng = random.Random(hash((dm.seed, self.epoch, rank, worker)) & 0xFFFFFFFF)
        # int tuples hash the same in every process (str hashes are salted per process)
        dm.rng = random.Random(hash((dm.seed, self.epoch, rank, worker, 1)) & 0xFFFFFFFF)
        if self.train:
            n_batches = train_batches_per_worker(dm.samples_per_epoch, dm.batch_size, world, num_workers, worker)
            raw = _shuffle(self._samples(self._resampled(rng), exact=False), dm.shuffle_buffer, rng)
            samples = _good(map(dm._make_sample, raw, itertools.repeat(True)))
            for _ in range(n_batches):
                yield dm.collate([next(samples) for _ in range(dm.batch_size)])
            return
        if len(self.urls) < world * num_workers and not self.files:
            raise DataError(f"{len(self.urls)} eval shards for {world} ranks x {num_workers} workers: each worker "
                            "needs at least one shard; write more, smaller shards (--maxcount) or lower num_workers")
        batch: list[dict[str, Any]] = []
        urls = self._eval_urls(rank, world, worker, num_workers)
        seen = good = 0

        def make(raw: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal seen
            seen += 1
            dm._counters[3, min(dm._worker_slot, 64)] += 1  # eval samples read: the denominator of the skip report
            return dm._make_sample(raw, False, self.labels_optional)

        for sample in _good(map(make, self._samples(urls, exact=True))):
            good += 1
            batch.append(sample)
            if len(batch) == dm.batch_size:
                yield dm.collate(batch)
                batch = []
        if batch:  # the last partial batch is kept: every sample is seen exactly once
            yield dm.collate(batch)
        if seen and not good and not self.files:  # an evaluation that measured nothing must not pass for one
            where = repr(urls[0]) + (f" and {len(urls) - 1} more shards" if len(urls) > 1 else "")
            raise DataError(f"every one of the {seen} samples in {where} was corrupt: check the data module's "
                            "input_exts, num_classes and transforms against the shards (see the warnings above)")

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
                raise DataError(f"{bad} corrupt samples in a row: check the data module's input_exts, "
                                "num_classes and transforms against the shards (see the warnings above)")
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


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
                 torch.int64: np.int64, torch.int32: np.int32, torch.int16: np.int16, torch.uint8: np.uint8,
                 torch.int8: np.int8, torch.bool: np.bool_}


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
            warnings.warn("pin_memory=True but no accelerator that supports pinned memory is available: "
                          "batches are not pinned", stacklevel=2)
        loader_pins, self.pin_mixed = pin_plan(pin_memory, mix, device)
        super().__init__(*args, pin_memory=loader_pins, **kwargs)
        self.mix, self._gen = mix, torch.Generator().manual_seed(mix_seed)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if isinstance(self.dataset, ShardStream):  # set before the workers copy the dataset
            trainer = getattr(self.dataset.dm, "trainer", None)
            # the trainer's epoch makes a resumed run continue the same sequence; alone, count the passes
            self.dataset.epoch = trainer.current_epoch if trainer is not None else self.dataset.epoch + 1
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


def _pinned(batch: Any) -> Any:
    """A copy of `batch` with every tensor (also inside dicts) in pinned memory; other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: _pinned(v) for k, v in batch.items()}
    return batch


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


# ----------------------------------------------------------------------------------------------- the DataModule
class StreamingDataModule(L.LightningDataModule):
    """WebDataset-style tar shards -> batches `{"inputs", "target", "key"}` (docs/architecture.md).

    Args:
        train_urls, val_urls, test_urls: shard URLs: brace patterns ("d/train-{000000..000009}.tar"), local paths,
            "pipe:cmd", http(s)/s3/gs URLs (webdataset's gopen); a list or a "::"-separated string of patterns.
        batch_size: per device.
        num_workers: DataLoader workers per device (0: in the main process).
        shuffle_buffer: samples in each worker's shuffle buffer (training).
        samples_per_epoch: training samples per epoch over all ranks; sets a fixed, equal batch count per rank.
            Default: the train count from index.json.
        num_classes, multilabel: label facts (multi-label: `json` list of class indices -> multi-hot).
        permute_seed, permute_block: one fixed permutation of input elements (docs/architecture.md).
        skip_bad_shards: warn and skip shards that cannot be opened instead of raising.
        check_counts: compare eval sample counts with index.json (mismatch is an error).
        scan_eval_shards: at setup, read every local val/test/predict shard to its end: a truncated shard, a
            sample count that differs from index.json (with check_counts) or a label at or above num_classes
            fails there, before training, not at the first validation an epoch later.
        max_eval_corrupt_fraction: validate/test/predict report how many samples they skipped as corrupt; more
            than this fraction of the samples read is an error (the metric would describe a subset). 0: any.
            Raw files given as `predict_files` are exempt: an unreadable one is skipped, named and counted.
        mix_batches: cross-worker shuffle: this many consecutive batches (from different workers) are re-dealt
            in the main process (training with num_workers > 1; 1 = off). Costs one copy per sample.
        pin_memory: hand batches over in pinned (page-locked) memory, for asynchronous host-to-device copies;
            with mixing on, the mixed batches are pinned (the mix writes them into pinned memory). No effect,
            with one warning, where no accelerator supports pinning.
        seed: base seed for shard resampling and shuffling (each rank and worker derives its own).
        predict_urls: shards for `perceiver-lit predict` (default: `test_urls`); read like eval, exactly once.
            Labels are optional there: unlabelled samples are predicted, not skipped.
        predict_files: raw files for `perceiver-lit predict` instead of shards (wins over predict_urls): a glob
            ("photos/*.jpg"), a folder (every file under it), a list file (one path a line; a file whose extension
            is not an input extension of the module), or a list of these. Decoded with the eval transforms;
            unreadable files and files of another modality are skipped, named and counted like corrupt samples.
        class_names: the names of the classes (index = position); default: `classes.json` beside the first local
            shard of train/val/test/predict_urls (written by perceiver-lit-shards), else None. The CLI passes them
            to the task, which keeps them in its checkpoint.
    """

    input_exts: tuple[str, ...] = ()  # the extensions a subclass decodes; nothing else is ever read
    # input extensions whose decoder takes any buffer: large members of local shards arrive as zero-copy
    # memoryviews of the memory-mapped shard (everything else, and every member of a streamed shard, is bytes)
    buffer_exts: tuple[str, ...] = ()
    label_exts: tuple[str, ...] = ("cls", "json")

    def __init__(
        self,
        train_urls: str | list[str] | None = None,
        val_urls: str | list[str] | None = None,
        test_urls: str | list[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        num_classes: int = 10,
        multilabel: bool = False,
        permute_seed: int | None = None,
        permute_block: int | tuple[int, ...] = 1,
        skip_bad_shards: bool = False,
        check_counts: bool = True,
        scan_eval_shards: bool = True,
        max_eval_corrupt_fraction: float = 0.01,
        mix_batches: int = 4,
        pin_memory: bool = False,
        seed: int = 0,
        predict_urls: str | list[str] | None = None,
        predict_files: str | list[str] | None = None,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.train_urls, self.val_urls, self.test_urls = train_urls, val_urls, test_urls
        self.predict_urls = predict_urls if predict_urls is not None else test_urls  # `perceiver-lit predict`
        self.batch_size, self.num_workers, self.shuffle_buffer = batch_size, num_workers, shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.num_classes, self.multilabel = num_classes, multilabel
        self.permute_seed, self.permute_block = permute_seed, permute_block
        self.skip_bad_shards, self.check_counts = skip_bad_shards, check_counts
        if not 0.0 <= max_eval_corrupt_fraction <= 1.0:
            raise ValueError(f"max_eval_corrupt_fraction must be in [0, 1], got {max_eval_corrupt_fraction}")
        self.scan_eval_shards, self.max_eval_corrupt_fraction = scan_eval_shards, max_eval_corrupt_fraction
        self.mix_batches, self.pin_memory, self.seed = mix_batches, pin_memory, seed
        self.input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] = ()  # set by the subclass
        self.predict_files = predict_files
        if class_names is None:
            from datamodules.class_names import find_class_names

            class_names = find_class_names([train_urls, val_urls, test_urls, self.predict_urls], num_classes)
        self.class_names: list[str] | None = list(class_names) if class_names else None
        # one counter slot per DataLoader worker (+ slot 0 for the main process), in shared memory so the
        # training process can read what its workers counted: see `corrupt_samples`
        # [corrupt (train + eval), bad shards, eval corrupt, eval samples read] x slot
        self._counters = torch.zeros(4, 65, dtype=torch.int64).share_memory_()
        self._worker_slot = 0
        self._warned: set[tuple[str, str]] = set()
        self.rng = random.Random(seed)  # augmentation randomness; reseeded per epoch, rank and worker
        self._streams: dict[str, ShardStream] = {}

    # ---- the corrupt-data hook the training side reads
    @property
    def corrupt_samples(self) -> int:
        """Corrupt samples skipped so far on this rank (all workers, all epochs). A task or the
        `LogCorruptSamples` callback logs it; sum over ranks with sync_dist."""
        return int(self._counters[0].sum())

    @property
    def bad_shards(self) -> int:
        """Shards skipped because they could not be opened (skip_bad_shards=True)."""
        return int(self._counters[1].sum())

    @property
    def eval_counts(self) -> tuple[int, int]:
        """(corrupt samples skipped, samples read) by val/test/predict passes so far on this rank; the
        `LogCorruptSamples` callback reports the difference over one pass and checks max_eval_corrupt_fraction."""
        return int(self._counters[2].sum()), int(self._counters[3].sum())

    def _corrupt(self, url: str, key: str, exc: BaseException, evaluating: bool = False, lost: bool = False) -> None:
        """Count and warn about one skipped sample; `evaluating`: in an eval pass, `lost`: never decoded (a tar
        that broke in it), so not yet counted as read."""
        slot = min(self._worker_slot, 64)
        self._counters[0, slot] += 1
        if evaluating:
            self._counters[2, slot] += 1
            self._counters[3, slot] += int(lost)
        if (url, key) in self._warned:  # resampled shards meet the same bad sample again: warn once per worker
            return
        self._warned.add((url, key))
        log.warning("corrupt sample skipped: shard=%s key=%s: %s: %s", url, key, type(exc).__name__, exc)

    def _bad_shard(self, url: str, exc: BaseException) -> None:
        self._counters[1, min(self._worker_slot, 64)] += 1
        if (url, None) in self._warned:  # resampled: the same shard again; warn once per worker
            return
        self._warned.add((url, None))
        log.warning("unreadable shard skipped (skip_bad_shards=True): %s", exc)

    # ---- per-sample decoding (runs in the workers)
    def decode_inputs(self, sample: dict[str, Any], train: bool) -> torch.Tensor | dict[str, torch.Tensor]:
        """Decode and transform the input of one raw sample; raise on bad data. Subclasses implement it."""
        raise NotImplementedError

    def find_ext(self, sample: dict[str, Any], exts: Sequence[str] | None = None) -> str:
        """The first of `exts` (default: input_exts) present in a raw sample, else a KeyError naming both."""
        exts = self.input_exts if exts is None else exts
        for ext in exts:
            if ext in sample:
                return ext
        found = sorted(k for k in sample if not k.startswith("__"))
        raise KeyError(f"no input among {list(exts)}; sample has {found}")

    def decode_target(self, sample: dict[str, Any]) -> torch.Tensor:
        """`cls`: ASCII class index -> int64 (), or a one-hot float32 (C,) when multilabel (a sample with one
        label). `json`: a list of indices (or {"label": ...}) -> float32 (C,) multi-hot when multilabel, else its
        single index. `json` wins when a multilabel sample has both."""
        if "cls" in sample and not (self.multilabel and "json" in sample):
            y = int(sample["cls"].decode("ascii").strip())
            if y >= self.num_classes:
                raise LabelRangeError(f"label {y} is not below data.init_args.num_classes={self.num_classes}")
            if y < 0:
                raise ValueError(f"label {y} outside [0, {self.num_classes})")
            if not self.multilabel:
                return torch.tensor(y, dtype=torch.int64)
            labels = [y]
        elif "json" in sample:
            obj = json.loads(sample["json"].decode("utf-8"))
            labels = obj.get("label", obj.get("labels")) if isinstance(obj, dict) else obj
            labels = [labels] if isinstance(labels, int) else list(labels)
            high = [c for c in labels if isinstance(c, int) and c >= self.num_classes]
            if high:
                raise LabelRangeError(f"label {max(high)} is not below data.init_args.num_classes={self.num_classes}")
            if any(not isinstance(c, int) or not 0 <= c < self.num_classes for c in labels):
                raise ValueError(f"labels {labels} not class indices in [0, {self.num_classes})")
            if not self.multilabel:
                if len(labels) != 1:
                    raise ValueError(f"single-label data module got {len(labels)} labels")
                return torch.tensor(labels[0], dtype=torch.int64)
        else:
            raise KeyError(f"no label: expected one of {list(self.label_exts)}")
        target = np.zeros(self.num_classes, dtype=np.float32)  # multi-hot; numpy: 1.6 us against torch's 6.3
        target[labels] = 1.0
        return torch.from_numpy(target)

    def permute_inputs(self, inputs: Any) -> Any:
        """Apply the fixed `permute_seed` permutation (default: elements = all dims but the last)."""
        from datamodules.transforms.permute import permute_elements

        return permute_elements(inputs, self.permute_seed, block=self.permute_block)

    def extra_fields(self, sample: dict[str, Any], inputs: Any) -> dict[str, Any]:
        """Extra per-sample tensors to batch (text: pad_mask). Default: none."""
        return {}

    def _make_sample(self, raw: dict[str, Any], train: bool, labels_optional: bool = False) -> dict[str, Any] | None:
        try:
            inputs = self.decode_inputs(raw, train)
            if self.permute_seed is not None:
                inputs = self.permute_inputs(inputs)
            if labels_optional and self.needs_label and not any(e in raw for e in self.label_exts):
                target = self.missing_target()  # predict: an unlabelled sample is predicted, not corrupt
            else:
                target = self.decode_target(raw) if self.needs_label else self.default_target(inputs)
            extra = self.extra_fields(raw, inputs)  # after the permutation: a pad_mask follows the bytes
        except LabelRangeError as e:  # the config, not the sample: stop
            raise LabelRangeError(_label_range_message(raw, e)) from None
        except Exception as e:  # noqa: BLE001 - any decoding failure is a corrupt sample
            self._corrupt(raw.get("__url__", "?"), raw.get("__key__", "?"), e, evaluating=not train)
            return None
        return {"inputs": inputs, "target": target, "key": raw["__key__"], **extra}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack per-sample tensors (and dicts of tensors); keys become a list of str; the inputs are batched by
        `collate_inputs`."""
        out: dict[str, Any] = {}
        for k, v in samples[0].items():
            if k == "inputs":
                out[k] = self.collate_inputs([s[k] for s in samples])
            elif k == "key":
                out[k] = [s[k] for s in samples]
            elif isinstance(v, dict):
                out[k] = {kk: stack([s[k][kk] for s in samples]) for kk in v}
            else:
                out[k] = stack([s[k] for s in samples])
        return out

    def collate_inputs(self, inputs: list[Any]) -> Any:
        """Batch the per-sample inputs (tensors, or dicts of tensors). Subclasses that turn uint8 into the
        normalised float batch, or hand on rows decoded in place, override this."""
        if isinstance(inputs[0], dict):
            return {k: stack([x[k] for x in inputs]) for k in inputs[0]}
        return stack(inputs)

    # ---- Lightning hooks
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else _rank_world()

    def _world(self) -> int:
        return self._rank_and_world()[1]

    def setup(self, stage: str | None = None) -> None:
        world, nw = self._world(), max(self.num_workers, 1)
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"],
                  None: ["train", "val", "test"]}
        for split in wanted.get(stage, ["train", "val", "test"]):
            if split == "predict" and self.predict_files is not None and split not in self._streams:
                from datamodules.files import expand_files

                self._streams[split] = ShardStream(self, expand_files(self.predict_files, self.input_exts),
                                                   train=False, counts=None, files=True)
                continue
            spec = getattr(self, f"{split}_urls")
            if spec is None or split in self._streams:
                continue
            urls = expand_urls(spec)
            counts = read_index_counts(urls)
            if split == "train":
                if self.samples_per_epoch is None:
                    if counts is None:
                        raise DataError("samples_per_epoch is needed: no index.json counts for train_urls "
                                        f"{spec!r}")
                    self.samples_per_epoch = sum(counts.values())
                if self.samples_per_epoch < world * self.batch_size:
                    raise DataError(f"samples_per_epoch={self.samples_per_epoch} < {world} ranks x batch_size "
                                    f"{self.batch_size}: no full batch per rank")
            elif len(urls) < world * nw:
                raise DataError(f"{split}_urls has {len(urls)} shards for {world} ranks x {nw} workers: exact eval "
                                "gives each worker whole shards; write more, smaller shards (perceiver-lit-shards "
                                "--maxcount) or lower num_workers")
            self._check_shard_headers(split, urls)
            top = read_index_counts(urls, "max_label") if self.needs_label else None
            if top and max(top.values()) >= self.num_classes:  # the writers' record: no shard needs to be read
                url = max(top, key=top.get)
                raise LabelRangeError(f"{split} shard {url!r} holds labels up to {top[url]} (index.json), not below "
                                      f"data.init_args.num_classes={self.num_classes}: set data.init_args.num_classes "
                                      "to the number of classes the shards hold (labels are 0-based)")
            self._check_first_sample(split, urls)
            if split != "train" and self.scan_eval_shards:
                self._scan_eval_shards(split, urls, counts)
            self._streams[split] = ShardStream(self, urls, train=split == "train", counts=counts,
                                               labels_optional=split == "predict")

    def _check_shard_headers(self, split: str, urls: list[str]) -> None:
        """Read the first header of every local shard: an empty, zero-length or non-tar shard anywhere in the list
        fails here (skip_bad_shards=False) or is named once (True), instead of stopping training when it is drawn."""
        bad = []
        for url in urls:
            if not is_local(url):
                continue
            try:
                problem = first_header_problem(url.removeprefix("file://"))
            except OSError as e:
                problem = f"{type(e).__name__}: {e}"
            if problem is not None:
                bad.append(f"{url}: {problem}")
        if not bad:
            return
        listed = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        if not self.skip_bad_shards:
            raise DataError(f"{len(bad)} of {len(urls)} {split} shards are unreadable: {listed}. Rewrite or remove "
                            "them, or set skip_bad_shards=True to skip them while training")
        log.warning("%d of %d %s shards are unreadable and will be skipped (skip_bad_shards=True): %s",
                    len(bad), len(urls), split, listed)

    def _check_first_sample(self, split: str, urls: list[str]) -> None:
        """Fail before training if the first sample of the first local shard lacks the input or the label."""
        if not urls or not is_local(urls[0]):
            return
        try:
            raw = next(iter_tar_samples(urls[0], lambda *a: None), None)
        except ShardOpenError:
            if self.skip_bad_shards:
                return
            raise
        if raw is None:
            return
        found = sorted(k for k in raw if not k.startswith("__"))
        if self.input_exts and not any(e in raw for e in self.input_exts):
            raise DataError(f"{split} shard {urls[0]!r} key {raw['__key__']!r}: no input key among "
                            f"{list(self.input_exts)} (found {found})")
        if self.needs_label and split != "predict" and not any(e in raw for e in self.label_exts):
            raise DataError(f"{split} shard {urls[0]!r} key {raw['__key__']!r}: no label key among "
                            f"{list(self.label_exts)} (found {found})")
        self._check_label_range(split, raw)

    def _check_label_range(self, split: str, raw: dict[str, Any]) -> None:
        """Raise LabelRangeError (naming split, shard and key) if the sample's label is >= num_classes."""
        if not self.needs_label or not any(e in raw for e in self.label_exts):
            return
        try:
            self.decode_target(raw)
        except LabelRangeError as e:
            raise LabelRangeError(_label_range_message(raw, e, split)) from None
        except Exception:  # noqa: BLE001 - a damaged label is a corrupt sample, skipped and counted when read
            pass

    def _scan_eval_shards(self, split: str, urls: list[str], counts: dict[str, int] | None) -> None:
        """Read every local shard of an eval split to its end, before training: eval sets are small, and a damaged
        one would otherwise stop the run at its first validation, an epoch in. A truncated shard, a sample count
        that differs from index.json (with check_counts) and a label >= num_classes fail here; with
        check_counts=False a truncated shard is only a warning (its lost samples are counted when evaluated)."""
        damaged = []
        for url in urls:
            if not is_local(url):
                continue
            broken: list[str] = []
            n = 0
            try:
                for raw in iter_tar_samples(url, lambda u, k, e: broken.append(f"breaks at key {k!r}: {e}"),
                                            self.input_exts):  # inputs stay zero-copy views: only labels are read
                    n += 1
                    self._check_label_range(split, raw)
            except ShardOpenError:
                continue  # named by _check_shard_headers (an error, or skipped with skip_bad_shards=True)
            expected = counts.get(url) if counts is not None else None
            if broken:
                damaged.append(f"{url}: truncated tar ({n} complete samples{f' of {expected}' if expected else ''}, "
                               f"{broken[0]})")
            elif expected is not None and self.check_counts and n != expected:
                damaged.append(f"{url}: {n} samples, index.json says {expected}")
        if not damaged:
            return
        listed = "; ".join(damaged[:5]) + (f"; and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        if not self.check_counts:
            log.warning("%d of %d %s shards are damaged (check_counts=False: evaluating what can be read): %s",
                        len(damaged), len(urls), split, listed)
            return
        raise DataError(f"{len(damaged)} of {len(urls)} {split} shards are damaged: {listed}. Rewrite them "
                        "(perceiver-lit-shards), or set data.init_args.check_counts=False to evaluate what can be read")

    needs_label = True  # False: unlabelled data (text MLM); the target comes from default_target

    def default_target(self, inputs: Any) -> torch.Tensor:
        return torch.tensor(-1, dtype=torch.int64)

    def missing_target(self) -> torch.Tensor:
        """The target of an unlabelled sample in predict: -1 (single-label) or all -1 (C,) (multi-label)."""
        if self.multilabel:
            return torch.full((self.num_classes,), -1.0)
        return torch.tensor(-1, dtype=torch.int64)

    def iter_file_samples(self, path: str) -> Iterator[dict[str, Any]]:
        """Raw samples of one file given in `predict_files` (default: the whole file is one sample under its
        extension, keyed by its path). Raises OSError when the file cannot be read."""
        from datamodules.files import file_sample

        yield file_sample(path)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # workers started by spawn get the module without its trainer
        state["trainer"] = None
        return state

    def _loader(self, split: str) -> DataLoader:
        if split not in self._streams:
            self.setup({"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split])
        if split not in self._streams:
            raise DataError(f"no {split}_urls configured")
        stream = self._streams[split]
        stream.rank, stream.world = self._rank_and_world()
        train = split == "train"
        return MixingLoader(
            stream, batch_size=None, collate_fn=_as_is, num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=False, mix=self.mix_batches if train and self.num_workers > 1 else 1,
            mix_seed=self.seed + stream.rank,
            prefetch_factor=2 if self.num_workers > 0 else None,
            multiprocessing_context=_worker_context() if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """One exact pass over `predict_urls` (default: `test_urls`), split by rank and worker like eval."""
        return self._loader("predict")


def _label_range_message(raw: dict[str, Any], error: LabelRangeError, split: str = "") -> str:
    return (f"{split + ' ' if split else ''}shard {raw.get('__url__', '?')!r} key {raw.get('__key__', '?')!r}: "
            f"{error}: set data.init_args.num_classes to the number of classes the shards hold (labels are "
            "0-based), or point the data module at the shards meant for this model")


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
        ctx.set_forkserver_preload(["torch", "datamodules.base"])
        return ctx
    return "fork"


class LogCorruptSamples(L.Callback):
    """Logs `data/corrupt_samples` and `data/bad_shards` (summed over ranks) at each train epoch end.

    After each validation, test and predict pass it reports the samples that pass skipped as corrupt (summed over
    ranks): logged as `val/corrupt_samples` / `test/corrupt_samples`, and printed (always for `perceiver-lit
    validate/test/predict`, when any were skipped inside `fit`). More than the data module's
    `max_eval_corrupt_fraction` of the samples read is a DataError: that metric would describe a subset.
    """

    def __init__(self) -> None:
        self._start = (0, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if isinstance(dm, StreamingDataModule):
            pl_module.log("data/corrupt_samples", float(dm.corrupt_samples), reduce_fx="sum", sync_dist=True)
            pl_module.log("data/bad_shards", float(dm.bad_shards), reduce_fx="sum", sync_dist=True)

    def _eval_start(self, trainer: L.Trainer) -> None:
        dm = trainer.datamodule
        if isinstance(dm, StreamingDataModule):
            self._start = dm.eval_counts

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer)

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # a few batches only: no pass to report on
            self._eval_end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, pl_module, "test")

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, pl_module, "predict")

    def _eval_end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if not isinstance(dm, StreamingDataModule):
            return
        now = dm.eval_counts
        counts = torch.tensor([now[0] - self._start[0], now[1] - self._start[1]], dtype=torch.float64)
        if trainer.world_size > 1:  # every rank reaches the epoch end: one all-reduce, not per step
            counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        skipped, read = int(counts[0]), int(counts[1])
        if stage != "predict":  # Lightning allows no logging in predict
            pl_module.log(f"{stage}/corrupt_samples", float(skipped), sync_dist=False)
        fraction = skipped / read if read else 0.0
        if skipped or trainer.state.fn != "fit":
            rank_zero_info(f"[perceiver-lit] {stage}: {skipped} of {read} samples skipped as corrupt ({fraction:.2%})"
                           + (": see the warnings above" if skipped else ""))
        # Raw files given to predict (predict_files) are the user's own: an unreadable one is skipped, named and
        # counted (the line above), and the others are still predicted; shards are a data set, held to the limit.
        raw_files = stage == "predict" and getattr(dm, "predict_files", None)
        if fraction > dm.max_eval_corrupt_fraction and not raw_files:
            raise DataError(f"{stage}: {skipped} of {read} samples ({fraction:.1%}) were corrupt and skipped, more "
                            f"than data.init_args.max_eval_corrupt_fraction={dm.max_eval_corrupt_fraction}: the "
                            "metrics would describe a subset of the data. Fix the shards (see the warnings above), or raise "
                            "the threshold to accept it")
