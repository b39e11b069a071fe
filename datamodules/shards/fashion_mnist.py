"""`perceiver-lit-shards fashion-mnist`: Fashion-MNIST IDX files -> train/test (and optional val) shards.

Each sample: `npy` (uint8 28x28, decoded with allow_pickle=False: a memcpy, the fastest decode) or `png`,
plus `cls` (the class index as ASCII).
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import struct

import numpy as np

from datamodules.shards.writer import ShardSummary, split_items, write_shards

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
# the label order of the dataset (github.com/zalandoresearch/fashion-mnist), written to <out>/classes.json
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally .gz): magic 0x0000 dtype ndim, big-endian dims, then the data."""
    for candidate in (path, path + ".gz"):
        if os.path.isfile(candidate):
            opener = gzip.open if candidate.endswith(".gz") else open
            with opener(candidate, "rb") as f:
                data = f.read()
            break
    else:
        raise FileNotFoundError(f"IDX file {path!r} (or {path}.gz) not found")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, file holds {arr.size} bytes")
    return arr.reshape(dims)


def load_split(root: str, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of 'train' or 'test'."""
    images, labels = (read_idx(os.path.join(root, name)) for name in FILES[split])
    if len(images) != len(labels):
        raise ValueError(f"{root} {split}: {len(images)} images but {len(labels)} labels")
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def encode_npy(item: tuple[np.ndarray, int]) -> dict[str, bytes]:
    image, label = item
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
    return {"npy": buf.getvalue(), "cls": str(int(label)).encode()}


def encode_png(item: tuple[np.ndarray, int]) -> dict[str, bytes]:
    from PIL import Image

    image, label = item
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return {"png": buf.getvalue(), "cls": str(int(label)).encode()}


def write(
    root: str, out: str, fmt: str = "npy", val_fraction: float = 0.0, limit: int | None = None, **kwargs
) -> list[ShardSummary]:
    """Write train-*, (val-*,) test-* shards of Fashion-MNIST from `root` into `out`."""
    from datamodules.class_names import write_class_names

    encode = {"npy": encode_npy, "png": encode_png}[fmt]
    write_class_names(out, CLASS_NAMES)
    summaries = []
    images, labels = load_split(root, "train", limit)
    train = list(zip(images, labels.tolist()))
    if val_fraction > 0:
        train, val = split_items(train, val_fraction, seed=kwargs.get("seed", 0))
        summaries.append(write_shards(val, encode, out, "val", **kwargs))
    summaries.insert(0, write_shards(train, encode, out, "train", **kwargs))
    images, labels = load_split(root, "test", limit)
    summaries.append(write_shards(list(zip(images, labels.tolist())), encode, out, "test", **kwargs))
    return summaries


def run(args: argparse.Namespace) -> list[ShardSummary]:
    from datamodules.shards.cli import writer_kwargs

    return write(args.root, args.out, args.format, args.val_fraction, args.limit, **writer_kwargs(args))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from datamodules.shards.cli import add_common_args, add_writer_parser

    p = add_writer_parser(subparsers, "fashion-mnist", "Fashion-MNIST IDX files -> train/test(/val) shards")
    p.add_argument("--root", default=DEFAULT_DIR, help="directory with the (gzipped) IDX files")
    p.add_argument("--format", choices=["npy", "png"], default="npy", help="npy: raw uint8, fastest to decode")
    p.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction of train as val-*")
    p.add_argument("--limit", type=int, default=None, help="first N samples per split only (tests, smoke runs)")
    add_common_args(p, prefix=None)
    p.set_defaults(func=run, maxcount=2500)
