"""`perceiver-lit-shards text`: text files -> `txt` shards (+ `cls` labels).

Inputs are files or directories. `--unit file`: one sample per file; `--unit line`: one per non-empty line;
`--unit fortune`: one per fortune (entries separated by a line holding '%', as in /usr/share/games/fortunes).
Labels: `--label-from dir` (parent folder name), `file` (file name, e.g. one file per language), or `none`
(masked byte modelling). Class names go to <out>/classes.json. A file that is not valid UTF-8 or cannot be read is
skipped with one warning naming it, and counted in the summary; a class left without any readable file is an
error (its index would silently go to the next class).
"""

from __future__ import annotations

import argparse
import logging
import os

from datamodules.class_names import write_class_names
from datamodules.shards.writer import ShardSummary, split_items, write_shards

log = logging.getLogger("datamodules.shards")


def list_files(paths: list[str]) -> list[str]:
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for dirpath, _, names in os.walk(p):
                files += [os.path.join(dirpath, n) for n in sorted(names)]
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"text input {p!r} does not exist")
    return sorted(files)


def split_text(text: str, unit: str) -> list[str]:
    if unit == "file":
        return [text] if text.strip() else []
    if unit == "line":
        return [line for line in text.splitlines() if line.strip()]
    if unit == "fortune":
        return [e.strip("\n") for e in text.replace("\r\n", "\n").split("\n%\n") if e.strip() and e.strip() != "%"]
    raise ValueError(f"unknown --unit {unit!r}")


def collect(
    paths: list[str],
    unit: str,
    label_from: str,
    suffixes: tuple[str, ...] = (".dat", ".u8", ".gz"),
    skipped: list[str] | None = None,
) -> tuple[list[tuple[str, int | None]], list[str]]:
    """[(text, label or None)], class names. Files ending in `suffixes` (fortune indexes etc.) are ignored.

    Args:
        skipped: if given, the files that were skipped (not UTF-8, unreadable) are appended to it.
    """
    texts: list[tuple[str, str | None]] = []
    bad: dict[str, str] = {}  # path -> why it was skipped
    lost: dict[str, str] = {}  # class name -> the first of its skipped files
    for path in list_files(paths):
        if path.endswith(suffixes):
            continue
        name = {"dir": os.path.basename(os.path.dirname(path)), "file": os.path.basename(path), "none": None}[
            label_from
        ]
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError) as e:  # binary/other-encoding files are not text samples: say so
            why = (
                f"not valid UTF-8 (byte {e.start}: {e.reason})"
                if isinstance(e, UnicodeDecodeError)
                else f"cannot be read ({type(e).__name__}: {e.strerror or e})"
            )
            log.warning("skipping %s: %s", path, why)
            bad[path] = why
            if name is not None:
                lost.setdefault(name, path)
            continue
        texts += [(t, name) for t in split_text(text, unit)]
    if skipped is not None:
        skipped.extend(bad)
    if not texts:
        raise ValueError(
            f"no UTF-8 text samples found in {paths}"
            + (f" ({len(bad)} files skipped, the first {next(iter(bad))}: {next(iter(bad.values()))})" if bad else "")
        )
    classes = sorted({n for _, n in texts if n is not None})
    vanished = sorted(set(lost) - set(classes))
    if vanished:  # its index would go to the next class, and every later class would shift
        path = lost[vanished[0]]
        raise ValueError(
            f"class {vanished[0]!r} (--label-from {label_from}) has no readable text: {path} is "
            f"{bad[path]}"
            + (f" (and {len(vanished) - 1} more classes)" if len(vanished) > 1 else "")
            + "; convert it to UTF-8 or remove it, so that the class list is what you meant"
        )
    index = {c: i for i, c in enumerate(classes)}
    return [(t, index[n] if n is not None else None) for t, n in texts], classes


def encode(item: tuple[str, int | None]) -> dict[str, bytes]:
    text, label = item
    out = {"txt": text.encode("utf-8")}
    if label is not None:
        out["cls"] = str(label).encode()
    return out


def run(args: argparse.Namespace) -> list[ShardSummary]:
    from datamodules.shards.cli import writer_kwargs

    skipped: list[str] = []
    items, classes = collect(args.inputs, args.unit, args.label_from, skipped=skipped)
    os.makedirs(args.out, exist_ok=True)
    write_class_names(args.out, classes)
    summaries = []
    if args.val_fraction > 0:
        items, val = split_items(items, args.val_fraction, args.seed)
        summaries.append(write_shards(val, encode, args.out, "val", **writer_kwargs(args)))
    summaries.insert(0, write_shards(items, encode, args.out, args.prefix, **writer_kwargs(args)))
    summaries[0].skipped += len(skipped)  # the source files skipped before the split count in the main summary
    return summaries


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from datamodules.shards.cli import add_common_args, add_writer_parser

    p = add_writer_parser(subparsers, "text", "text files/lines/fortunes -> txt (+ cls) shards")
    p.add_argument("inputs", nargs="+", help="files or directories")
    p.add_argument("--unit", choices=["file", "line", "fortune"], default="line", help="what one sample is")
    p.add_argument("--label-from", choices=["dir", "file", "none"], default="none", help="where the label comes from")
    p.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction as val-*")
    add_common_args(p)
    p.set_defaults(func=run)
