"""`perceiver-lit-shards image-folder`: an ImageNet-style tree root/<class>/<image> -> shards.

Classes are the sorted subdirectory names (index = position); the names are written to <out>/classes.json.
`--unlabelled` (or a flat folder of images with no subfolders) writes the images without labels, for
`perceiver-lit predict`.
Images are stored as they are (bytes copied, no re-encode) under their own extension, after a header check
that PIL can identify them; `--resize S` re-encodes as JPEG with the shorter side at most S (smaller shards,
faster decode).
"""

from __future__ import annotations

import argparse
import io
import os

from datamodules.class_names import write_class_names
from datamodules.shards.writer import ShardSummary, write_shards

EXTS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


def list_images(root: str, unlabelled: bool = False) -> tuple[list[tuple[str, int | None]], list[str]]:
    """[(path, class index or None)], class names; error if root has no images.

    Labelled: root/<class>/<image>. Unlabelled (`unlabelled`, or a flat folder with images and no subfolders):
    every image under root, label None, no class names."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    flat = not classes and any(os.path.splitext(f)[1].lower() in EXTS for f in os.listdir(root))
    if unlabelled or flat:
        items = [
            (os.path.join(d, f), None)
            for d, _, files in sorted(os.walk(root))
            for f in sorted(files)
            if os.path.splitext(f)[1].lower() in EXTS
        ]
        if not items:
            raise ValueError(f"{root!r}: no {sorted(EXTS)} files")
        return items, []
    if not classes:
        raise ValueError(f"{root!r} has no class subfolders (expected root/<class>/<image>) and no images")
    items = []
    for label, name in enumerate(classes):
        for dirpath, _, files in os.walk(os.path.join(root, name)):
            items += [
                (os.path.join(dirpath, f), label) for f in sorted(files) if os.path.splitext(f)[1].lower() in EXTS
            ]
    if not items:
        raise ValueError(f"{root!r}: no {sorted(EXTS)} files under the class folders")
    return items, classes


class Encode:
    """Picklable encoder: (path, label) -> {"jpg"|"png"|"webp": bytes, "cls": bytes}; no `cls` for label None."""

    def __init__(self, resize: int | None = None, quality: int = 90):
        self.resize, self.quality = resize, quality

    def __call__(self, item: tuple[str, int]) -> dict[str, bytes]:
        from PIL import Image

        path, label = item
        with open(path, "rb") as f:
            data = f.read()
        ext = EXTS[os.path.splitext(path)[1].lower()]
        if self.resize is None:
            Image.open(io.BytesIO(data)).verify()  # header/structure check without a full decode
        else:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            scale = self.resize / min(img.size)
            if scale < 1:
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=self.quality)
            data, ext = buf.getvalue(), "jpg"
        return {ext: data} if label is None else {ext: data, "cls": str(label).encode()}


def run(args: argparse.Namespace) -> list[ShardSummary]:
    from datamodules.shards.cli import writer_kwargs

    items, classes = list_images(args.root, args.unlabelled)
    os.makedirs(args.out, exist_ok=True)
    write_class_names(args.out, classes)
    return [write_shards(items, Encode(args.resize, args.quality), args.out, args.prefix, **writer_kwargs(args))]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from datamodules.shards.cli import add_common_args, add_writer_parser

    p = add_writer_parser(subparsers, "image-folder", "root/<class>/<image> tree -> shards (jpg/png/webp + cls)")
    p.add_argument("root", help="directory with one subfolder per class")
    p.add_argument("--resize", type=int, default=None, help="re-encode as JPEG, shorter side at most this")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality with --resize")
    p.add_argument(
        "--unlabelled",
        action="store_true",
        help="every image under root, no labels (for predict); a flat folder is read this way anyway",
    )
    add_common_args(p)
    p.set_defaults(func=run)
