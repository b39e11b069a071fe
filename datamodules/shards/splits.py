"""Writing a file writer's items (`audio`, `video`) as train shards plus an optional held-out `val` split
(`--val-fraction`), and the options that go with it."""

from __future__ import annotations

import argparse

from datamodules.shards.cli import add_common_args, writer_kwargs
from datamodules.shards.writer import ShardSummary, split_items, write_shards


def add_split_args(p: argparse.ArgumentParser) -> None:
    """`--val-fraction` and the options every writer shares."""
    p.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction as val-* shards")
    add_common_args(p)


def write_split_shards(items: list, encode, args: argparse.Namespace, nothing: str) -> list[ShardSummary]:
    """Write `items` as args.prefix shards, holding out `--val-fraction` as `val` shards. No items: exit with the
    message `nothing`."""
    if not items:
        raise SystemExit(nothing)
    kwargs = writer_kwargs(args)
    if getattr(args, "val_fraction", 0) > 0:
        train, val = split_items(items, args.val_fraction, seed=args.seed)
        return [
            write_shards(train, encode, args.out, args.prefix, **kwargs),
            write_shards(val, encode, args.out, "val", **kwargs),
        ]
    return [write_shards(items, encode, args.out, args.prefix, **kwargs)]
