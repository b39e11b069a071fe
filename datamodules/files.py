"""Raw files for `perceiver-lit predict` (`data.init_args.predict_files`), read with no shard step.

Each file becomes a raw sample like one from a shard, `{"__key__": path, "__url__": path, ext: bytes}`, so a data
module decodes it with its own `decode_inputs` and eval transforms. A file that cannot be read, or whose extension
is not one of the module's `input_exts` (another modality), fails in decoding and is skipped, named and counted as
a corrupt sample.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from datamodules.errors import DataError


def _list_file(path: str) -> list[str]:
    """One path a line; blank lines and '#' comments skipped; relative paths are relative to the list's folder."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    base = os.path.dirname(path)
    return [
        line if os.path.isabs(line) else os.path.join(base, line) for line in lines if line and not line.startswith("#")
    ]


def expand_files(spec: str | Sequence[str], input_exts: Sequence[str] = ()) -> list[str]:
    """Paths from a glob, a folder (every file under it, sorted), a list file, a single file, or a list of these.

    A file whose extension is not in `input_exts` is read as a list file (so `photos.txt` lists photos, while a
    text module reads `notes.txt` itself). A glob or folder that matches nothing is a DataError naming it; a
    listed file that does not exist is not: it is skipped and counted when read, like any unreadable file.
    """
    specs = [spec] if isinstance(spec, str) else list(spec)
    paths: list[str] = []
    for s in specs:
        s = os.path.expanduser(str(s))
        if os.path.isdir(s):
            found = sorted(os.path.join(d, n) for d, _, names in os.walk(s) for n in names)
        elif os.path.isfile(s):
            ext = os.path.splitext(s)[1].lower().lstrip(".")
            found = [s] if ext in input_exts else _list_file(s)
        elif glob.has_magic(s):
            found = sorted(p for p in glob.glob(s, recursive=True) if os.path.isfile(p))
        else:
            raise DataError(f"predict_files {s!r}: no such file or folder")
        if not found:
            raise DataError(f"predict_files {s!r} matches no file")
        paths += found
    return paths


def file_sample(path: str) -> dict[str, Any]:
    """The whole file as one raw sample under its (lower-case) extension, keyed by its path."""
    with open(path, "rb") as f:
        data = f.read()
    return {"__key__": path, "__url__": path, os.path.splitext(path)[1].lower().lstrip("."): data}


def iter_files(
    paths: Iterable[str],
    read: Callable[[str], Iterator[dict[str, Any]]],
    corrupt: Callable[[str, str, Exception], None],
) -> Iterator[dict[str, Any]]:
    """Raw samples of `paths` through `read` (a data module's `iter_file_samples`); an unreadable file is passed to
    `corrupt(path, path, exc)` (counted as corrupt) and skipped."""
    for path in paths:
        try:
            yield from read(path)
        except Exception as e:  # noqa: BLE001 - unreadable (or, for meshes, unparsable): skipped and counted
            corrupt(path, path, e)
