"""`perceiver-lit-shards audio ROOT --labels CSV --out DIR`: audio files + a label CSV -> tar shards.

Label CSVs understood (`--csv-format auto` tells them apart by the header):
  simple    `path,labels` with a header; labels "3", "3,7" (class indices) or names ("Speech,Music") that
            `--label-map` or a sorted vocabulary turns into indices (the names go to OUT/classes.json).
  audioset  AudioSet segments (`# YTID, start_seconds, end_seconds, positive_labels`, `#` comment lines):
            `--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"`, with `--label-map class_labels_indices.csv`
            (`index,mid,display_name`). The audio file of a row is found in ROOT by stem: `YTID`, or `YTID_<start>`
            with the start in seconds or milliseconds (the usual downloader names). Rows without a file are
            skipped and counted: AudioSet always has some.

Each sample: the audio bytes under their extension (`flac`, `wav`, ...), `json` (list of class indices) and, with
exactly one label, also `cls`. `--sample-rate SR` re-encodes to mono flac at SR on the way (band-limited resampler
of datamodules/transforms/audio.py), so training never has to resample.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from datamodules.class_names import write_class_names
from datamodules.shards.cli import add_writer_parser
from datamodules.shards.labels import (
    add_label_args,
    index_labels,
    label_map_names,
    parse_labels,
    read_label_map,
    read_simple_csv,
)
from datamodules.shards.splits import add_split_args, write_split_shards
from datamodules.shards.writer import ShardSummary

AUDIO_EXTS = (".flac", ".wav", ".ogg", ".mp3")


# ----------------------------------------------------------------------------------------------------- CSV rows
def read_audioset_csv(
    csv_path: str | os.PathLike, root: str | os.PathLike, label_map: dict[str, int], exts: Sequence[str] = AUDIO_EXTS
) -> tuple[list[tuple[str, list[str | int]]], int]:
    """AudioSet segment rows -> ([(file, labels)], rows whose file is missing)."""
    by_stem: dict[str, str] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() in exts:
                by_stem[stem] = os.path.join(dirpath, name)
    rows, missing = [], 0
    with open(csv_path, newline="") as f:
        reader = csv.reader(f, skipinitialspace=True)
        for row in reader:
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 4:
                raise ValueError(
                    f"{csv_path}, line {reader.line_num}: expected 'YTID, start, end, \"labels\"', got {row}"
                )
            try:
                ytid, start = row[0].strip(), float(row[1])
                labels = parse_labels(row[3], label_map)
            except ValueError as e:
                raise ValueError(f"{csv_path}, line {reader.line_num}: {e}") from None
            candidates = (
                ytid,
                f"{ytid}_{int(start)}",
                f"{ytid}_{start:.3f}",
                f"{ytid}_{int(round(start * 1000))}",
                f"{ytid}_{start:.1f}",
            )
            path = next((by_stem[c] for c in candidates if c in by_stem), None)
            if path is None:
                missing += 1
                continue
            rows.append((path, labels))
    return rows, missing


def detect_csv_format(csv_path: str | os.PathLike) -> str:
    with open(csv_path) as f:
        first = f.readline()
    return "audioset" if first.startswith("#") or "YTID" in first else "simple"


# ----------------------------------------------------------------------------------------------------- encoding
def encode_audio(item: tuple[str, list[int]], sample_rate: int | None = None) -> dict[str, bytes]:
    """(path, labels) -> {"flac"|"wav"|...: bytes, "json": labels, ["cls"]}; re-encoded to mono flac at
    `sample_rate` when given. Runs in writer processes; an unreadable file raises (skipped and counted)."""
    path, labels = item
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    sample: dict[str, bytes] = {}
    if sample_rate is None:
        sample[ext] = Path(path).read_bytes()
    else:
        import soundfile as sf
        import torch

        from datamodules.transforms.audio import decode_audio, resample

        wave, sr = decode_audio(Path(path).read_bytes())
        if sr != sample_rate:
            wave = resample(torch.from_numpy(wave), sr, sample_rate).numpy()
        buf = io.BytesIO()
        sf.write(buf, wave, sample_rate, format="FLAC")
        sample["flac"] = buf.getvalue()
    sample["json"] = json.dumps(sorted(set(labels))).encode()
    if len(labels) == 1:
        sample["cls"] = str(labels[0]).encode()
    return sample


def audio_items(
    root: str, labels_csv: str, csv_format: str = "auto", label_map_path: str | None = None, out_dir: str = "."
) -> list[tuple[str, list[int]]]:
    """Resolve a label CSV into [(audio path, class indices)]."""
    label_map = read_label_map(label_map_path) if label_map_path else None
    fmt = detect_csv_format(labels_csv) if csv_format == "auto" else csv_format
    if fmt == "audioset":
        if label_map is None:
            raise ValueError("AudioSet CSVs name classes by mid: pass --label-map class_labels_indices.csv")
        rows, missing = read_audioset_csv(labels_csv, root, label_map)
        if missing:
            print(f"audio: {missing} rows of {labels_csv} have no audio file under {root} (skipped)")
    elif fmt == "simple":
        rows = read_simple_csv(labels_csv, root, label_map)
    else:
        raise ValueError(f"--csv-format must be auto, simple or audioset, got {fmt!r}")
    if label_map_path:
        write_class_names(out_dir, label_map_names(label_map_path))
    return index_labels(rows, out_dir)


def run(args: argparse.Namespace) -> list[ShardSummary]:
    items = audio_items(args.root, args.labels, args.csv_format, args.label_map, args.out)
    nothing = f"audio: no samples found from {args.labels} under {args.root}"
    return write_split_shards(items, partial(encode_audio, sample_rate=args.sample_rate), args, nothing=nothing)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_writer_parser(subparsers, "audio", "audio files + label CSV (simple or AudioSet) -> shards", __doc__)
    add_label_args(
        p,
        labels_required=True,
        csv_formats=("auto", "simple", "audioset"),
        root_help="folder holding the audio files",
        labels_help="label CSV: 'path,labels' or AudioSet segments",
        label_map_help="index,mid,display_name CSV (AudioSet) or index,name",
    )
    p.add_argument("--sample-rate", type=int, default=None, help="re-encode to mono flac at this rate")
    add_split_args(p)
    p.set_defaults(func=run)
