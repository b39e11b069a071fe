"""`perceiver-lit-shards video ROOT --out DIR`: video files -> tar shards, class-per-folder or a label CSV.

  class-per-folder  ROOT/<class>/<name>.mp4; classes are the sorted folder names (written to OUT/classes.json).
  --labels CSV      `path,labels` (as the audio writer: indices, names, "3,7" multi-labels, --label-map).

Each sample: the video bytes under their extension (`mp4`, `webm`, ...), `cls` (single label) and `json` (list of
class indices). `--with-audio EXT` also packs a sibling audio file of the same stem (`clip.mp4` + `clip.flac`)
as a separate key, for the audio+video data module's separate-key layout; samples without one are skipped.
Bytes are copied, never re-encoded.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from pathlib import Path

from datamodules.class_names import write_class_names
from datamodules.shards.cli import add_writer_parser
from datamodules.shards.labels import add_label_args, index_labels, label_map_names, read_label_map, read_simple_csv
from datamodules.shards.splits import add_split_args, write_split_shards
from datamodules.shards.writer import ShardSummary

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov")


def folder_items(root: str, out_dir: str | None = None) -> list[tuple[str, list[int]]]:
    """ROOT/<class>/<file> -> [(path, [class index])]; classes sorted by name, written to out_dir/classes.json."""
    classes = sorted(d.name for d in Path(root).iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class folders (expected ROOT/<class>/<video>)")
    items = [
        (str(p), [i])
        for i, name in enumerate(classes)
        for p in sorted(Path(root, name).rglob("*"))
        if p.suffix.lower() in VIDEO_EXTS
    ]
    if out_dir is not None:
        write_class_names(out_dir, classes)
    return items


def encode_video(item: tuple[str, list[int]], audio_ext: str | None = None) -> dict[str, bytes] | None:
    """(path, labels) -> {"mp4": bytes, ["flac": bytes], "json", ["cls"]}; None (skipped) when the audio twin
    asked for is missing."""
    path, labels = item
    stem, ext = os.path.splitext(path)
    sample = {ext.lower().lstrip("."): Path(path).read_bytes()}
    if audio_ext:
        audio = f"{stem}.{audio_ext}"
        if not os.path.isfile(audio):
            print(f"video: no {audio_ext} next to {path}; skipped")
            return None
        sample[audio_ext] = Path(audio).read_bytes()
    sample["json"] = json.dumps(sorted(set(labels))).encode()
    if len(labels) == 1:
        sample["cls"] = str(labels[0]).encode()
    return sample


def video_items(
    root: str, labels_csv: str | None = None, label_map_path: str | None = None, out_dir: str = "."
) -> list[tuple[str, list[int]]]:
    if labels_csv is None:
        return folder_items(root, out_dir)
    label_map = read_label_map(label_map_path) if label_map_path else None
    if label_map_path:
        write_class_names(out_dir, label_map_names(label_map_path))
    return index_labels(read_simple_csv(labels_csv, root, label_map), out_dir)


def run(args: argparse.Namespace) -> list[ShardSummary]:
    items = video_items(args.root, args.labels, args.label_map, args.out)
    nothing = f"video: no {'/'.join(VIDEO_EXTS)} files found under {args.root}"
    return write_split_shards(items, partial(encode_video, audio_ext=args.with_audio), args, nothing=nothing)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_writer_parser(subparsers, "video", "video files (class-per-folder or label CSV) -> shards", __doc__)
    add_label_args(
        p,
        root_help="folder holding the videos (ROOT/<class>/*.mp4 without --labels)",
        labels_help="'path,labels' CSV instead of class folders",
        label_map_help="index,name CSV for name labels",
    )
    p.add_argument("--with-audio", default=None, metavar="EXT", help="also pack <stem>.EXT (e.g. flac)")
    add_split_args(p)
    p.set_defaults(func=run)
