"""`perceiver-lit-shards synthetic flow` and `perceiver-lit-shards flow kitti` run as a user runs them (the console
script, in a subprocess), and FlowDataModule reads what they wrote: the batch contract and the exact flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.flow import FlowDataModule
from datamodules.transforms import flow as F

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def shards_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "perceiver-lit-shards"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_synthetic_flow_command_to_batches(tmp_path):
    # docs/data.md: perceiver-lit-shards synthetic flow --out data/flow --num-samples 3000 --val-fraction 0.1
    run = shards_cli(
        "synthetic",
        "flow",
        "--out",
        "data/flow",
        "--num-samples",
        "24",
        "--val-fraction",
        "0.25",
        "--flow-size",
        "24x32",
        "--maxcount",
        "3",
        "--workers",
        "2",
        "--no-progress",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    out = tmp_path / "data" / "flow"
    shards = json.loads((out / "index.json").read_text())["shards"]
    assert shards == {**{f"train-{i:06d}.tar": 3 for i in range(6)}, "val-000000.tar": 3, "val-000001.tar": 3}
    assert "train: 18 samples in 6 shards, " in run.stdout and "val: 6 samples in 2 shards" in run.stdout
    split = (out / "files" / "flow" / "FlyingChairs_train_val.txt").read_text().split()
    val_files = [i + 1 for i, mark in enumerate(split) if mark == "2"]  # the files the val shard holds, in order

    dm = FlowDataModule(
        train_urls=str(out / "train-{000000..000005}.tar"),
        val_urls=str(out / "val-{000000..000001}.tar"),
        crop_size=(16, 16),
        batch_size=4,
        num_workers=2,
        seed=0,
    )
    assert dm.input_shape == (2, 16, 16, 3)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 18 // 4
    for b in batches:
        assert b["inputs"].dtype == torch.float32 and b["inputs"].shape == (4, 2, 16, 16, 3)
        assert -1 <= b["inputs"].min() and b["inputs"].max() <= 1
        assert b["target"].dtype == torch.float32 and b["target"].shape == (4, 16, 16, 2)
        assert b["valid"].dtype == torch.bool and b["valid"].shape == (4, 16, 16) and b["valid"].all()
        assert isinstance(b["key"], list) and all(isinstance(k, str) for k in b["key"])
    # val: centred crops of exactly the flow the generator wrote (rows 4..19, columns 8..23 of 24x32)
    val = {k: b["target"][i] for b in dm.val_dataloader() for i, k in enumerate(b["key"])}
    assert sorted(val) == [f"val_{i:08d}" for i in range(6)]  # the writer numbers the held-out pairs in order
    for i, n in enumerate(val_files):
        target = val[f"val_{i:08d}"]
        flow = F.read_flo(out / "files" / "flow" / "data" / f"{n:05d}_flow.flo")
        torch.testing.assert_close(target, torch.from_numpy(flow[4:20, 8:24]))


def test_kitti_command_with_a_bad_pair(tmp_path):
    # docs/data.md: perceiver-lit-shards flow kitti /data/KITTI2015 --out data/kitti
    base = tmp_path / "KITTI2015" / "training"
    for d in ("image_2", "flow_occ"):
        os.makedirs(base / d)
    rng = np.random.default_rng(0)
    for n in range(3):
        h, w = 10, 12
        for t in (10, 11):
            size = (h, w - 2) if (n == 2 and t == 11) else (h, w)  # pair 2: frames of different sizes
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                base / "image_2" / f"{n:06d}_{t}.png"
            )
        flow = np.round(rng.uniform(-50, 50, (h, w, 2)) * 64) / 64
        (base / "flow_occ" / f"{n:06d}_10.png").write_bytes(F.encode_kitti_flow(flow, rng.random((h, w)) > 0.5))
    run = shards_cli("flow", "kitti", "KITTI2015", "--out", "data/kitti", "--no-progress", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "train: 2 samples in 1 shards" in run.stdout and "1 skipped" in run.stdout
    assert "000002_10.png" in run.stderr and "frames of different sizes in one pair" in run.stderr
    dm = FlowDataModule(
        val_urls=str(tmp_path / "data" / "kitti" / "train-000000.tar"), crop_size=(10, 12), batch_size=2, num_workers=0
    )
    dm.setup("validate")
    (batch,) = list(dm.val_dataloader())
    assert sorted(batch["key"]) == ["000000_10", "000001_10"]
    assert 0 < batch["valid"].float().mean() < 1 and (batch["target"][~batch["valid"]] == 0).all()

    # nothing readable at all: one line naming the first failure, exit status 2
    (base / "image_2" / "000000_11.png").unlink()
    (base / "image_2" / "000001_11.png").unlink()
    run = shards_cli("flow", "kitti", "KITTI2015", "--out", "data/kitti2", "--no-progress", cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("perceiver-lit-shards flow: error: train: none of the 3")


def _ddp_rank(rank: int, world: int, port: int, root: str) -> None:
    import torch.distributed as dist

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        dm = FlowDataModule(
            train_urls=os.path.join(root, "train-{000000..000004}.tar"),
            val_urls=os.path.join(root, "train-{000000..000004}.tar"),
            crop_size=8,
            batch_size=2,
            num_workers=1,
            shuffle_buffer=4,
        )
        dm.setup("fit")
        train = [len(b["key"]) for b in dm.train_dataloader()]
        val = {k: b["target"][i].sum().item() for b in dm.val_dataloader() for i, k in enumerate(b["key"])}
        with open(os.path.join(root, f"rank{rank}.json"), "w") as f:
            json.dump({"train": train, "val": val}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_gloo_ranks_split_flow_shards_exactly(tmp_path):
    import socket

    import torch.multiprocessing as mp

    from datamodules.shards.flow import EncodePair, chairs_items
    from datamodules.shards.flow_synthetic import make_flow
    from datamodules.shards.writer import write_shards

    make_flow(tmp_path / "files", 13, seed=0, size=(8, 8))
    write_shards(
        chairs_items(str(tmp_path / "files"))["train"], EncodePair(), str(tmp_path), "train", maxcount=3, progress=False
    )  # 5 uneven shards: 3, 3, 3, 3, 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["train"] == r1["train"] == [2] * (13 // (2 * 2))  # equal batch counts: the ranks stay in lockstep
    assert not set(r0["val"]) & set(r1["val"]) and len(r0["val"]) + len(r1["val"]) == 13  # each pair once
    expected = {
        f"{n:05d}": float(F.read_flo(tmp_path / "files" / "data" / f"{n:05d}_flow.flo").sum()) for n in range(1, 14)
    }
    assert {**r0["val"], **r1["val"]} == pytest.approx(expected, rel=1e-5)
