"""`perceiver-lit-shards`: write WebDataset tar shards from files.

    perceiver-lit-shards fashion-mnist --out data/fashion-mnist
    perceiver-lit-shards image-folder /data/imagenet/train --out data/imagenet --prefix train --workers 8
    perceiver-lit-shards pointcloud /data/ModelNet40 --out data/modelnet40 --num-points 2048
    perceiver-lit-shards text /usr/share/games/fortunes --out data/fortunes
    perceiver-lit-shards flow sintel /data/MPI-Sintel --out data/sintel

A subcommand is a module in datamodules/shards/ that exposes `add_parser(subparsers)`: it adds its parser
with `add_writer_parser` (and `add_common_args` for --out/--maxcount/--maxsize/--workers/--seed/--no-shuffle), and sets
`func=run`, where `run(args) -> list[ShardSummary]` writes the shards. The CLI prints each summary at the end.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from datamodules.optional import one_line_missing

SUBCOMMANDS = ("image_folder", "fashion_mnist", "pointcloud", "text", "audio", "video", "flow", "synthetic")


def add_writer_parser(
    subparsers: argparse._SubParsersAction, name: str, help: str, doc: str | None = None
) -> argparse.ArgumentParser:
    """A writer's subparser.

    Args:
        subparsers: the CLI's subparsers.
        name: the subcommand.
        help: its line in the command list.
        doc: the --help description (the writer's module docstring), printed with its own line breaks; None: none.
    """
    if doc is None:
        return subparsers.add_parser(name, help=help)
    return subparsers.add_parser(name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_args(p: argparse.ArgumentParser, prefix: str | None = "train") -> None:
    """Options every writer shares."""
    p.add_argument("--out", required=True, help="output directory (shards + index.json)")
    if prefix is not None:
        p.add_argument("--prefix", default=prefix, help="shard name prefix: <prefix>-000000.tar")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most")
    p.add_argument("--maxsize", type=float, default=None, help="bytes per shard at most (e.g. 1e9)")
    p.add_argument("--workers", type=int, default=1, help="encoding processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle before writing")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false", help="keep the source order")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bar")


def writer_kwargs(args: argparse.Namespace) -> dict:
    """The write_shards keyword arguments from the common options."""
    return {
        "maxcount": args.maxcount,
        "maxsize": int(args.maxsize) if args.maxsize else None,
        "workers": args.workers,
        "shuffle": args.shuffle,
        "seed": args.seed,
        "progress": args.progress,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perceiver-lit-shards", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module_name = f"datamodules.shards.{name}"
        module = importlib.import_module(module_name)  # a listed module that is missing is a packaging error
        if not hasattr(module, "add_parser"):
            logging.getLogger("datamodules.shards").warning("%s has no add_parser(subparsers); skipped", module_name)
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with one_line_missing(f"{parser.prog} {args.command}"):  # e.g. trimesh without the `media` extra
            summaries = args.func(args)
    except (ValueError, OSError) as e:  # bad input (layout, CSV, paths): one line naming it, not a traceback
        parser.exit(2, f"{parser.prog} {args.command}: error: {e}\n")
    print("\nsummary:")
    for s in summaries:
        print("  " + s.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
