"""Data loader throughput: samples/s of a DataModule vs the bare decode+transform cost of the same samples.

    python benchmarks/loader.py                       # image at 224x224 JPEG; writes benchmarks/results/loader.*
    python benchmarks/loader.py --modality image --samples 512 --workers 0 2

Each modality registers a `Bench` in BENCHES: `make_shards(dir, n)` writes n samples and returns (urls, count),
`make_dm(urls, train, workers)` builds the DataModule, and `bare(raw_sample, train)` does the same decode and
transform on one raw sample ({ext: bytes}) with no tar streaming, shuffling, batching or worker processes. The
overhead is 1 - dm_rate / bare_rate with the loader in the main process (workers=0), both timed in process CPU
time (robust on a shared machine); runs with workers > 0 report absolute wall-clock throughput.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamodules.sources import expand_urls, iter_tar_samples  # noqa: E402

# process CPU time for in-process runs (robust on a shared, loaded machine); wall time when workers run
CLOCK = time.process_time
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclass
class Bench:
    make_shards: Callable[[str, int], tuple[str, int]]
    make_dm: Callable[[str, bool, int, int], Any]  # (urls, train, workers, batch_size)
    bare: Callable[[dict[str, bytes], bool], Any]
    describe: str


# ------------------------------------------------------------------------------------------------------ image
def _image_shards(root: str, n: int) -> tuple[str, int]:
    """n ImageNet-like JPEGs (sizes around 500x375, smooth content + noise, quality 90) in shards of 128."""
    from PIL import Image

    from datamodules.shards.writer import write_shards

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        w, h = (500, 375) if i % 3 else (375, 500)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / (20 + i % 7)), np.cos(yy / (15 + i % 5)), np.sin((xx + yy) / 30)], -1)
        arr = ((base + 1) * 100 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        items.append((buf.getvalue(), i % 1000))
    summary = write_shards(items, _encode_jpeg, root, "bench", maxcount=128, progress=False)
    return summary.pattern, summary.samples


def _encode_jpeg(item: tuple[bytes, int]) -> dict[str, bytes]:
    return {"jpg": item[0], "cls": str(item[1]).encode()}


def _image_dm(urls: str, train: bool, workers: int, batch_size: int):
    from datamodules.image import ImageDataModule

    kw = {"train_urls": urls} if train else {"val_urls": urls}
    return ImageDataModule(
        image_size=224,
        batch_size=batch_size,
        num_workers=workers,
        shuffle_buffer=256,
        mix_batches=4 if train else 1,
        **kw,
    )


def _image_bare(raw: dict[str, bytes], train: bool) -> torch.Tensor:
    from datamodules.transforms import image as T

    img = T.decode_image(raw["jpg"], "jpg", "RGB")
    rng = _BARE_RNG
    img = T.hflip(T.inception_crop(img, 224, rng), rng) if train else T.center_crop(img, 224, 224 / 256)
    return T.to_tensor(img, T.IMAGENET_MEAN, T.IMAGENET_STD)


_BARE_RNG = random.Random(0)

BENCHES: dict[str, Bench] = {
    "image": Bench(_image_shards, _image_dm, _image_bare, "224x224 JPEG (ImageNet-like 500x375 sources)"),
}


# ----------------------------------------------------------------------------------------------------- runner
def time_bare(bench: Bench, raws: list[dict[str, bytes]], train: bool) -> float:
    global CLOCK
    CLOCK = time.process_time
    t0 = CLOCK()
    for raw in raws:
        bench.bare(raw, train)
    return len(raws) / (CLOCK() - t0)


def time_dm(bench: Bench, urls: str, n: int, train: bool, workers: int, batch_size: int) -> float:
    global CLOCK
    CLOCK = time.process_time if workers == 0 else time.perf_counter
    dm = bench.make_dm(urls, train, workers, batch_size)
    if train:
        dm.samples_per_epoch = 4 * n  # steady state: resampling reads the shards again; the buffer fill amortises
    dm.setup("fit" if train else "validate")
    loader = dm.train_dataloader() if train else dm.val_dataloader()
    t0 = CLOCK()
    seen = sum(len(b["key"]) for b in loader)  # includes worker start-up: what an epoch really costs
    if dm.corrupt_samples:
        raise RuntimeError(f"{dm.corrupt_samples} corrupt samples in the benchmark shards")
    return seen / (CLOCK() - t0)


def run(
    modalities: list[str], samples: int, workers: list[int], batch_sizes: list[int], repeats: int
) -> dict[str, Any]:
    rows = []
    for name in modalities:
        bench = BENCHES[name]
        with tempfile.TemporaryDirectory() as root:
            urls, n = bench.make_shards(root, samples)
            raws = [r for u in expand_urls(urls) for r in iter_tar_samples(u, lambda *a: None)]
            for train in (False, True):
                for bs in batch_sizes:
                    for w in workers:
                        # bare and DataModule runs alternate, best of each: a shared machine drifts over minutes
                        bare = rate = 0.0
                        for _ in range(repeats):
                            bare = max(bare, time_bare(bench, raws, train))
                            rate = max(rate, time_dm(bench, urls, n, train, w, bs))
                        row = {
                            "modality": name,
                            "describe": bench.describe,
                            "mode": "train" if train else "eval",
                            "batch_size": bs,
                            "workers": w,
                            "samples": n,
                            "bare_samples_per_s": round(bare, 1),
                            "dm_samples_per_s": round(rate, 1),
                        }
                        if w == 0:
                            row["overhead"] = round(1 - rate / bare, 4)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "loadavg_1m": round(os.getloadavg()[0], 1),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Loader throughput ({result['time']}, {result['cpus']} CPUs, load {result['loadavg_1m']}, "
        f"torch {result['torch']})",
        "",
        "Overhead = 1 - DataModule rate / bare decode+crop+to-tensor rate, both in one process (workers=0), "
        "timed in process CPU time. Rows with workers > 0 are wall-clock samples/s including worker start-up: "
        "only meaningful on an otherwise idle machine.",
        "",
        "| modality | mode | batch | workers | samples | bare samples/s | DataModule samples/s | overhead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        overhead = f"{100 * r['overhead']:.1f}%" if "overhead" in r else "-"
        lines.append(
            f"| {r['modality']} ({r['describe']}) | {r['mode']} | {r['batch_size']} | {r['workers']} | "
            f"{r['samples']} | "
            f"{r['bare_samples_per_s']} | {r['dm_samples_per_s']} | {overhead} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modality", nargs="+", default=["image"], choices=sorted(BENCHES))
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch-size", type=int, nargs="+", default=[32, 64])
    p.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    p.add_argument("--out", default=os.path.join(RESULTS, "loader"), help="writes <out>.json and <out>.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = run(args.modality, args.samples, args.workers, args.batch_size, args.repeats)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
