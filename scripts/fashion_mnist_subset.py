"""Fashion-MNIST shards of a class subset, relabelled 0..k-1: the local fine-tuning task of
configs/pretrained/local_quickstart_finetune.yaml (a new head on the quickstart's own best.ckpt).

    python scripts/fashion_mnist_subset.py --out data/fashion-mnist-5 --classes 5 6 7 8 9

Writes train-*, val-* (5% of train) and test-* shards (npy + cls, as `perceiver-lit-shards fashion-mnist`).
"""

from __future__ import annotations

import argparse

from datamodules.shards.fashion_mnist import DEFAULT_DIR, encode_npy, load_split
from datamodules.shards.writer import split_items, write_shards


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=DEFAULT_DIR, help="folder of the IDX files")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--classes",
        type=int,
        nargs="+",
        default=[5, 6, 7, 8, 9],
        help="Fashion-MNIST classes to keep, in their new order (default: sandal, shirt, sneaker, bag, ankle boot)",
    )
    p.add_argument("--maxcount", type=int, default=2500)
    args = p.parse_args(argv)
    new = {c: i for i, c in enumerate(args.classes)}
    for split in ("train", "test"):
        images, labels = load_split(args.root, split)
        items = [(im, new[int(y)]) for im, y in zip(images, labels) if int(y) in new]
        if split == "train":
            items, val = split_items(items, 0.05, seed=0)
            write_shards(val, encode_npy, args.out, "val", maxcount=args.maxcount, progress=False)
        s = write_shards(items, encode_npy, args.out, split, maxcount=args.maxcount, progress=False)
        print(f"{split}: {s.samples} samples -> {s.pattern}")


if __name__ == "__main__":
    main()
