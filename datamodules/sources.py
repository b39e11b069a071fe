"""Shard sources: URL expansion, `index.json` counts and reading one tar shard as raw samples.

Light on purpose (no torch, no Lightning): the shard writers share `INDEX_NAME` with the readers.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from braceexpand import braceexpand

from datamodules.errors import DataError
from datamodules.tarstream import NotATarError, iter_file_members, iter_members

INDEX_NAME = "index.json"  # written by perceiver-lit-shards next to the shards: {"shards": {basename: count}}
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's convention: key = path up to the first dot


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
                raise DataError(
                    f"shard pattern {pattern!r}: {len(missing)} of {len(local)} files missing, first {missing[0]!r}"
                )
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


def iter_tar_samples(
    url: str, on_truncated: Callable[[str, str, Exception], None], view_exts: Sequence[str] = ()
) -> Iterator[dict[str, Any]]:
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
