"""Writing a writer's items as train shards plus an optional held-out `val` split (`--val-fraction`)."""

from __future__ import annotations

import argparse

from datamodules.shards.cli import writer_kwargs
from datamodules.shards.writer import ShardSummary, split_items, write_shards


def write_split_shards(items: list, encode, args: argparse.Namespace) -> list[ShardSummary]:
    """Write `items` as args.prefix shards, holding out `--val-fraction` as `val` shards."""
    kwargs = writer_kwargs(args)
    if getattr(args, "val_fraction", 0) > 0:
        train, val = split_items(items, args.val_fraction, seed=args.seed)
        return [write_shards(train, encode, args.out, args.prefix, **kwargs),
                write_shards(val, encode, args.out, "val", **{**kwargs, "shuffle": False})]
    return [write_shards(items, encode, args.out, args.prefix, **kwargs)]
