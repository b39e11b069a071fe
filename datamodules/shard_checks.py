"""Setup checks over whole shard lists, run before training: every shard's first header, and every eval shard
read to its end. A damaged shard fails (or is named once) here, not when it is first drawn an epoch in."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from datamodules.errors import DataError
from datamodules.sources import ShardOpenError, is_local, iter_tar_samples
from datamodules.tarstream import first_header_problem

log = logging.getLogger("datamodules")


def check_shard_headers(split: str, urls: list[str], skip_bad_shards: bool) -> None:
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
    if not skip_bad_shards:
        raise DataError(
            f"{len(bad)} of {len(urls)} {split} shards are unreadable: {listed}. Rewrite or remove "
            "them, or set skip_bad_shards=True to skip them while training"
        )
    log.warning(
        "%d of %d %s shards are unreadable and will be skipped (skip_bad_shards=True): %s",
        len(bad),
        len(urls),
        split,
        listed,
    )


def scan_eval_shards(
    split: str,
    urls: list[str],
    counts: dict[str, int] | None,
    check_counts: bool,
    input_exts: Sequence[str],
    check_label_range: Callable[[str, dict[str, Any]], None],
) -> None:
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
            for raw in iter_tar_samples(
                url, lambda u, k, e, broken=broken: broken.append(f"breaks at key {k!r}: {e}"), input_exts
            ):  # inputs stay zero-copy views: only labels are read
                n += 1
                check_label_range(split, raw)
        except ShardOpenError:
            continue  # named by check_shard_headers (an error, or skipped with skip_bad_shards=True)
        expected = counts.get(url) if counts is not None else None
        if broken:
            damaged.append(
                f"{url}: truncated tar ({n} complete samples{f' of {expected}' if expected else ''}, {broken[0]})"
            )
        elif expected is not None and check_counts and n != expected:
            damaged.append(f"{url}: {n} samples, index.json says {expected}")
    if not damaged:
        return
    listed = "; ".join(damaged[:5]) + (f"; and {len(damaged) - 5} more" if len(damaged) > 5 else "")
    if not check_counts:
        log.warning(
            "%d of %d %s shards are damaged (check_counts=False: evaluating what can be read): %s",
            len(damaged),
            len(urls),
            split,
            listed,
        )
        return
    raise DataError(
        f"{len(damaged)} of {len(urls)} {split} shards are damaged: {listed}. Rewrite them "
        "(perceiver-lit-shards), or set data.init_args.check_counts=False to evaluate what can be read"
    )
