"""Safe, fast .npy decoding: never unpickles, and parses each distinct header once.

`np.load(BytesIO(data), allow_pickle=False)` is safe too, but costs ~60 us per call, mostly re-parsing the same
header text with `ast.literal_eval`; a shard of Fashion-MNIST images has one header for all its samples. Here
the header is parsed once (by numpy's own parser) and cached by its bytes, and the array is one copy out of the
member's bytes. Object dtypes (pickles) are refused by the header check, before any data is looked at.
"""

from __future__ import annotations

import io
import math

import numpy as np

_MAGIC = b"\x93NUMPY"
_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}
_MAX_CACHED = 4096


def _parse_header(data: bytes, major: int) -> tuple[np.dtype, tuple[int, ...], bool]:
    stream = io.BytesIO(data)
    stream.seek(8)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(stream, max_header_size=10_000)
    if dtype.hasobject:
        raise ValueError(f"npy holds an object array ({dtype}); refused: objects would need unpickling")
    return dtype, tuple(shape), bool(fortran)


def decode_npy(data: bytes) -> np.ndarray:
    """npy bytes -> a writable array. ValueError names what is wrong (magic, version, object dtype, size)."""
    if data[:6] != _MAGIC:
        raise ValueError(f"not an npy file: starts with {bytes(data[:6])!r}, expected {_MAGIC!r}")
    major = data[6]
    if major not in (1, 2, 3):
        raise ValueError(f"npy format version {major}.{data[7]} is not supported (1.0, 2.0, 3.0)")
    start = 10 if major == 1 else 12
    header_len = int.from_bytes(data[8:start], "little")
    offset = start + header_len
    header = bytes(data[start:offset])
    parsed = _HEADERS.get(header)
    if parsed is None:  # parse the header only (a copy of it), never the array's bytes
        prefix = bytes(data[:offset])
        if major == 3:  # utf-8 headers: numpy's reader for 2.0 parses them the same way
            prefix = prefix[:6] + b"\x02" + prefix[7:]
        parsed = _parse_header(prefix, 1 if major == 1 else 2)
        if len(_HEADERS) < _MAX_CACHED:
            _HEADERS[header] = parsed
    dtype, shape, fortran = parsed
    count = math.prod(shape)
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(
            f"npy data has {len(data) - offset} bytes, its header says {shape} {dtype} ({count * dtype.itemsize} bytes)"
        )
    arr = np.frombuffer(data, dtype, count, offset)
    arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
    return arr.copy(order="K")
