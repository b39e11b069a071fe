"""Write items to tar shards: shuffled, split by --maxcount/--maxsize, encoded in parallel processes, with a
sample-count index (index.json) that the DataModules use for the exact eval check.

How a modality writer plugs in (see fashion_mnist.py / image_folder.py)::

    def encode(item) -> dict[str, bytes] | None:   # a top-level (picklable) function, runs in worker processes
        path, label = item
        return {"jpg": open(path, "rb").read(), "cls": str(label).encode()}   # None: skip this item

    summary = write_shards(items, encode, out_dir="data/x", prefix="train", maxcount=1000, workers=4)
    print(summary.describe())                     # shards, samples, bytes, skipped, and the brace pattern

Sample values must be bytes; keys are extensions without the dot ("jpg", "cls", "json", "npy", "flac").
`__key__` is assigned here (`<prefix>_<index>`) unless encode sets it. Shards are named
`<prefix>-000000.tar ...`; the index maps each shard's basename to its sample count and is merged with an
existing index.json in the same directory (other splits keep their entries).
"""

from __future__ import annotations

import glob
import io
import json
import logging
import multiprocessing as mp
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from datamodules.sources import INDEX_NAME

log = logging.getLogger("datamodules.shards")

Encoder = Callable[[Any], "dict[str, bytes] | None"]


@dataclass
class ShardSummary:
    """What one write_shards call produced."""

    out_dir: str
    prefix: str
    shards: dict[str, int] = field(default_factory=dict)  # basename -> samples
    max_labels: dict[str, int] = field(default_factory=dict)  # basename -> its largest class index (labelled data)
    nbytes: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def samples(self) -> int:
        return sum(self.shards.values())

    @property
    def pattern(self) -> str:
        """Brace pattern matching all shards, e.g. data/train-{000000..000009}.tar."""
        n = len(self.shards)
        if n == 0:
            return ""
        if n == 1:
            return os.path.join(self.out_dir, f"{self.prefix}-000000.tar")
        return os.path.join(self.out_dir, f"{self.prefix}-{{000000..{n - 1:06d}}}.tar")

    def describe(self) -> str:
        rate = self.samples / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.prefix}: {self.samples} samples in {len(self.shards)} shards, {self.nbytes / 1e6:.1f} MB, "
            f"{self.skipped} skipped, {self.seconds:.1f}s ({rate:.0f} samples/s) -> {self.pattern}"
        )


class _TarOut:
    """One open tar shard (no compression, fixed metadata so rewrites are byte-identical)."""

    def __init__(self, path: str):
        self.path, self.count, self.nbytes = path, 0, 0
        self.max_label = -1  # the largest class index written (cls or json), -1: none
        self.tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)

    def add(self, sample: dict[str, Any]) -> None:
        key = sample["__key__"]
        check_key(key)
        for ext, data in sample.items():
            if ext.startswith("__"):
                continue
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"sample {key!r} field {ext!r}: values must be bytes, got {type(data).__name__}")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            self.tar.addfile(info, io.BytesIO(data))
            self.nbytes += 512 + (len(data) + 511) // 512 * 512
        self.count += 1
        self.max_label = max(self.max_label, max_label(sample))

    def close(self) -> None:
        self.tar.close()


def max_label(sample: dict[str, Any]) -> int:
    """The largest class index in a sample's `cls` or `json` label (as the DataModules read them), else -1. Kept
    per shard in index.json, so that a data module with too few classes fails at setup, before training."""
    try:
        if "cls" in sample:
            return int(bytes(sample["cls"]).decode("ascii").strip())
        if "json" in sample:
            obj = json.loads(bytes(sample["json"]).decode("utf-8"))
            labels = obj.get("label", obj.get("labels")) if isinstance(obj, dict) else obj
            labels = [labels] if isinstance(labels, int) else list(labels)
            return max((c for c in labels if isinstance(c, int)), default=-1)
    except (ValueError, TypeError, AttributeError):  # not a class index: the readers skip it as corrupt
        pass
    return -1


def check_key(key: str, what: str = "sample key") -> None:
    """Readers split a member name at the first '.' of its basename into key and extension (WebDataset's rule),
    and skip basenames starting with '__': a key must have neither, or its samples come back merged or lost."""
    base = key.rpartition("/")[2]
    if not base or "." in base or base.startswith("__"):
        raise ValueError(
            f"{what} {key!r}: must be non-empty, without '.' and not start with '__' (readers split "
            "'<key>.<ext>' at the first dot); rename it, e.g. with '_' for '.'"
        )


def _write_job(
    args: tuple[str, str, int, list[tuple[int, Any]], Encoder, str, int | None],
) -> tuple[list, int, int, str]:
    """Encode one chunk of items into one or more temp shards (more when --maxsize binds)."""
    out_dir, prefix, job, items, encode, key_prefix, maxsize = args
    outs: list[_TarOut] = []
    skipped = 0
    first_error = ""
    cur: _TarOut | None = None
    for index, item in items:
        try:
            sample = encode(item)
        except Exception as e:  # noqa: BLE001 - a bad source file is skipped with one line, counted
            log.warning("skipping %r: %s: %s", item, type(e).__name__, e)
            first_error = first_error or f"{item!r}: {type(e).__name__}: {e}"
            sample = None
        if sample is None:
            skipped += 1
            continue
        sample.setdefault("__key__", f"{key_prefix}_{index:08d}")
        size = sum(len(v) + 1024 for k, v in sample.items() if not k.startswith("__"))
        if cur is None or (maxsize is not None and cur.count > 0 and cur.nbytes + size > maxsize):
            if cur is not None:
                cur.close()
            cur = _TarOut(os.path.join(out_dir, f".{prefix}.tmp-{job:06d}-{len(outs):04d}.tar"))
            outs.append(cur)
        cur.add(sample)
    if cur is not None:
        cur.close()
    return [(o.path, o.count, os.path.getsize(o.path), o.max_label) for o in outs], skipped, len(items), first_error


def write_shards(
    items: Sequence[Any],
    encode: Encoder,
    out_dir: str,
    prefix: str,
    *,
    maxcount: int = 1000,
    maxsize: int | None = None,
    workers: int = 1,
    shuffle: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> ShardSummary:
    """Shuffle `items`, encode each with `encode` (in `workers` processes), write `<prefix>-NNNNNN.tar` shards of
    at most `maxcount` samples and `maxsize` bytes into `out_dir`, and record the counts in index.json."""
    from tqdm import tqdm

    if maxcount < 1:
        raise ValueError(f"--maxcount must be >= 1, got {maxcount}")
    if "/" in prefix:
        raise ValueError(f"--prefix {prefix!r}: a file name prefix, without '/' (--out chooses the folder)")
    check_key(prefix, "--prefix")
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    order = list(range(len(items)))
    if shuffle:
        random.Random(seed).shuffle(order)  # shuffle before writing: each shard is a random sample of the split
    jobs = [
        (out_dir, prefix, j, [(i, items[i]) for i in order[s : s + maxcount]], encode, prefix, maxsize)
        for j, s in enumerate(range(0, len(order), maxcount))
    ]
    results: list[tuple[list, int, int, str]] = []
    bar = tqdm(total=len(items), desc=f"{prefix} -> {out_dir}", unit="sample", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers) as pool:
            for res in pool.imap_unordered(_write_job, jobs):
                results.append(res)
                bar.update(res[2])
    else:
        for job in jobs:
            results.append(_write_job(job))
            bar.update(results[-1][2])
    bar.close()
    summary = ShardSummary(out_dir=out_dir, prefix=prefix)
    temps = sorted(t for res in results for t in res[0])  # job order, then sub-shard order
    if items and not temps:  # nothing encoded: fail, and leave the shards of an earlier run as they were
        first = next((res[3] for res in results if res[3]), "")
        raise ValueError(
            f"{prefix}: none of the {len(items)} inputs could be written (the first failure: "
            f"{first or 'the encoder returned no sample'}); nothing was written to {out_dir}"
        )
    # Only now, with the new shards ready: stale shards of an earlier, larger run would join the brace pattern.
    for old in glob.glob(os.path.join(out_dir, f"{prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar")):
        os.remove(old)
    for n, (tmp, count, nbytes, top) in enumerate(temps):
        name = f"{prefix}-{n:06d}.tar"
        os.replace(tmp, os.path.join(out_dir, name))
        summary.shards[name] = count
        summary.nbytes += nbytes
        if top >= 0:
            summary.max_labels[name] = top
    summary.skipped = sum(res[1] for res in results)
    update_index(out_dir, prefix, summary.shards, summary.max_labels)
    summary.seconds = time.time() - t0
    return summary


def update_index(out_dir: str, prefix: str, shards: dict[str, int], max_labels: dict[str, int] | None = None) -> None:
    """Merge this prefix's shard counts (and largest class index per shard, `max_label`) into out_dir/index.json
    (entries of other prefixes are kept)."""
    path = os.path.join(out_dir, INDEX_NAME)
    index: dict[str, Any] = {"version": 1, "shards": {}}
    if os.path.isfile(path):
        with open(path) as f:
            index = json.load(f)

    def ours(name: str) -> bool:
        return name.startswith(prefix + "-") and name[len(prefix) + 1 : -4].isdigit()

    kept = {k: v for k, v in index.get("shards", {}).items() if not ours(k)}
    index["shards"] = dict(sorted({**kept, **shards}.items()))
    kept = {k: v for k, v in index.get("max_label", {}).items() if not ours(k)}
    if kept or max_labels:
        index["max_label"] = dict(sorted({**kept, **(max_labels or {})}.items()))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, path)


def split_items(items: Iterable[Any], val_fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Deterministically hold out `val_fraction` of items (for writers with a --val-fraction option)."""
    items = list(items)
    order = list(range(len(items)))
    random.Random(seed + 1).shuffle(order)
    n_val = int(round(len(items) * val_fraction))
    val = sorted(order[:n_val])
    val_set = set(val)
    return [items[i] for i in range(len(items)) if i not in val_set], [items[i] for i in val]
