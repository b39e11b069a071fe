"""Seeded synthetic media for tests and demos: real files (mp4, wav/flac, off/npy, txt), then shards.

`perceiver-lit-shards synthetic MODALITY --out DIR` writes the files under `DIR/files/MODALITY/` (with a labels
CSV or class folders), then packs them into shards under `DIR/` with the same writer the real-data subcommands
use, so the synthetic data takes the exact path real data takes. `--val-fraction` (default 0.25) goes to val-*
shards (test-* for point clouds, as ModelNet40); the rest to `--prefix` (default train). Every modality writes through
one function (`_write`) with all the common writer options, and `MODALITIES` maps each modality to its generator;
a modality's optional package (trimesh, soundfile, av) missing is a one-line error naming the `media` extra.

Modalities (label = class index):
  video        moving-digit mp4 (a PIL-drawn digit bouncing around; H.264 via PyAV), class-per-folder. 10 classes.
  audio        spoken digits (espeak-ng, else flite, else DTMF tones) as wav/flac, `path,labels` CSV;
               `--multilabel` speaks 1-3 distinct digits per clip -> AudioSet-style multi-labels.
  audiovisual  one mp4 with both streams: the digit shown, brightening while it is spoken. 10 classes.
  pointcloud   cube/sphere/cylinder/cone/torus meshes (trimesh) as .off, or sampled points as .npy. 5 classes, in
               that order (classes.json).
  text         fortunes in several languages (Debian fortunes*, fortunes-de/es/it/pl/ru/br) for language ID.
  flow         frame pairs with exact optical flow: textured layers under affine and smooth motions, with
               occlusions (flow_synthetic.py), in FlyingChairs' layout. No labels.
Same seed -> same files (speech engines are deterministic; voices/speed/pitch are drawn from the seed). The
media generators live in synthetic_media.py; this module is the subcommand.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from datamodules.class_names import write_class_names
from datamodules.shards.flow_synthetic import add_flow_args, synthetic_flow
from datamodules.shards.synthetic_media import (
    LANGUAGES,
    SHAPES,
    make_audio,
    make_audiovisual,
    make_pointcloud,
    make_text,
    make_video,
)


# --------------------------------------------------------------------------------------------------- the CLI
def _encode_file(item: tuple[str, int]) -> dict[str, bytes]:
    """(path, class) -> {ext: file bytes, "cls"}: the generic sample for point clouds and text."""
    path, label = item
    return {Path(path).suffix.lstrip(".").lower(): Path(path).read_bytes(), "cls": str(label).encode()}


def _write(args: argparse.Namespace, splits: dict[str, list], encode: Callable[[Any], Any]) -> list:
    """The one place synthetic shards are written: `splits` {"train"|"val"|"test": items}; "train" is written under
    `--prefix`, every split with the common writer options (--maxcount, --maxsize, --workers, --seed, --no-shuffle,
    --no-progress), so no modality can drop one. Held-out splits are shuffled too (seeded), as the other writers
    do: any prefix of them (`limit_val_batches`) is a random sample, not the first classes."""
    from datamodules.shards import writer
    from datamodules.shards.cli import writer_kwargs

    kwargs = writer_kwargs(args)
    return [
        writer.write_shards(
            items,
            encode,
            args.out,
            args.prefix if split == "train" else split,
            **kwargs,
        )
        for split, items in splits.items()
        if items
    ]


def _held_out(args: argparse.Namespace, items: list) -> dict[str, list]:
    from datamodules.shards.writer import split_items

    if args.val_fraction <= 0:
        return {"train": items}
    train, val = split_items(items, args.val_fraction, seed=args.seed)
    return {"train": train, "val": val}


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "n": args.num_samples,
        "seed": args.seed,
        "engine": args.engine,
        "frames": args.frames,
        "size": args.size,
        "fps": args.fps,
        "sample_rate": args.sample_rate,
    }


def _audio(args: argparse.Namespace, files: Path) -> list:
    from datamodules.shards.audio import audio_items, encode_audio

    labels = make_audio(files, seconds=args.seconds, fmt=args.format, multilabel=args.multilabel, **_common(args))
    print(f"synthetic audio: {args.num_samples} {args.format} files under {files}")
    if args.files_only:
        return []
    write_class_names(args.out, [str(d) for d in range(10)])  # the spoken digits
    return _write(args, _held_out(args, audio_items(str(files), str(labels), "simple", None, args.out)), encode_audio)


def _video(args: argparse.Namespace, files: Path) -> list:
    from datamodules.shards.video import encode_video, folder_items

    if args.modality == "video":
        make_video(files, **_common(args))
    else:
        make_audiovisual(files, separate=args.separate_audio, **_common(args))
    print(f"synthetic {args.modality}: {args.num_samples} mp4 files under {files}")
    if args.files_only:
        return []
    encode = partial(encode_video, audio_ext="flac" if args.separate_audio else None)
    return _write(args, _held_out(args, folder_items(str(files), args.out)), encode)


def _pointcloud(args: argparse.Namespace, files: Path) -> list:
    """Meshes (or sampled points) in ModelNet40's layout, train/ and test/ (`--val-fraction` of them); sharded with
    the `pointcloud` writer's surface sampler. Labels are the index in SHAPES (classes.json), whichever shapes the
    draw happened to include."""
    from datamodules.shards.pointcloud import Encode

    n_test = int(round(args.num_samples * args.val_fraction))
    make_pointcloud(files, args.num_samples - n_test, args.seed, args.points_format, args.num_points, "train")
    if n_test:
        make_pointcloud(files, n_test, args.seed + 1, args.points_format, args.num_points, "test")
    print(
        f"synthetic pointcloud: {args.num_samples} {args.points_format} files under {files} "
        f"(ModelNet40 layout, classes {', '.join(SHAPES)})"
    )
    if args.files_only:
        return []
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_class_names(args.out, SHAPES)
    splits = {
        split: [(str(p), SHAPES.index(p.parent.parent.name)) for p in sorted(files.glob(f"*/{split}/*"))]
        for split in ("train", "test")
    }
    return _write(args, splits, Encode(args.num_points, args.seed) if args.points_format == "off" else _encode_file)


def _text(args: argparse.Namespace, files: Path) -> list:
    languages = args.languages.split(",") if args.languages else None
    make_text(files, args.num_samples, args.seed, languages)
    languages = (files / "languages.txt").read_text().split()
    print(f"synthetic text: {args.num_samples} fortunes in {', '.join(languages)} under {files}")
    if args.files_only:
        return []
    items = [(str(p), index) for index, lang in enumerate(languages) for p in sorted((files / lang).glob("*.txt"))]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_class_names(args.out, languages)
    return _write(args, _held_out(args, items), _encode_file)


# modality -> (args, files dir) -> shard summaries. Every entry writes through `_write`.
MODALITIES: dict[str, Callable[[argparse.Namespace, Path], list]] = {
    "video": _video,
    "audio": _audio,
    "audiovisual": _video,
    "pointcloud": _pointcloud,
    "text": _text,
    "flow": synthetic_flow,
}
# The optional package each modality's generator imports, and the extra that installs it.
NEEDS: dict[str, tuple[str, ...]] = {
    "video": ("av",),
    "audio": ("soundfile",),
    "audiovisual": ("av", "soundfile"),
    "pointcloud": ("trimesh",),
    "text": (),
    "flow": (),
}


def run(args: argparse.Namespace) -> list:
    from datamodules.optional import require

    for module in NEEDS[args.modality]:
        require(module, f"`synthetic {args.modality}`")
    files = Path(args.out) / "files" / args.modality
    if files.exists():
        shutil.rmtree(files)  # same seed -> same files: never mix with an earlier run's
    return MODALITIES[args.modality](args, files)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from datamodules.shards.cli import add_common_args, add_writer_parser

    p = add_writer_parser(
        subparsers, "synthetic", "seeded synthetic media (real files) -> shards, for tests/demos", __doc__
    )
    p.add_argument("modality", choices=sorted(MODALITIES))
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--val-fraction", type=float, default=0.25, help="held out as val-* shards (test/ for points)")
    p.add_argument("--files-only", action="store_true", help="write the media files, no shards")
    g = p.add_argument_group("video / audiovisual")
    g.add_argument("--frames", type=int, default=16)
    g.add_argument("--size", type=int, default=32, help="frame height = width (even)")
    g.add_argument("--fps", type=int, default=10)
    g.add_argument("--separate-audio", action="store_true", help="audiovisual: video-only mp4 + flac key")
    g = p.add_argument_group("audio")
    g.add_argument("--sample-rate", type=int, default=16000)
    g.add_argument("--seconds", type=float, default=1.5)
    g.add_argument("--format", default="flac", choices=("flac", "wav"))
    g.add_argument("--multilabel", action="store_true", help="1-3 digits per clip, AudioSet-style labels")
    g.add_argument("--engine", default="auto", choices=("auto", "espeak-ng", "flite", "tones"))
    g = p.add_argument_group("pointcloud / text")
    g.add_argument("--points-format", default="off", choices=("off", "npy"))
    g.add_argument("--num-points", type=int, default=2048)
    g.add_argument("--languages", default=None, help=f"comma list of {','.join(LANGUAGES)} (default: installed)")
    add_flow_args(p)
    add_common_args(p)
    p.set_defaults(func=run)
