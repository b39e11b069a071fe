"""The `perceiver-lit-shards image-folder` and `pointcloud` commands of docs/data.md, run through the shard CLI
with the options the docs show (--prefix, --workers, --resize; --num-points, --maxcount), and read back."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from datamodules.shards import cli


def _members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_image_folder_with_prefix_workers_and_resize(tmp_path):
    # docs/data.md: perceiver-lit-shards image-folder /data/imagenet/train --out data/imagenet --prefix train
    #               --workers 8 --resize 320
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        os.makedirs(tmp_path / "src" / c)
        for i in range(3):
            arr = rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)  # 90 wide, 60 high: the shorter side is 60
            Image.fromarray(arr).save(tmp_path / "src" / c / f"{i}.png")
    out = tmp_path / "out"
    assert cli.main(
        [
            "image-folder",
            str(tmp_path / "src"),
            "--out",
            str(out),
            "--prefix",
            "train",
            "--workers",
            "2",
            "--resize",
            "32",
            "--maxcount",
            "4",
            "--no-progress",
        ]
    ) in (0, None)
    index = json.loads((out / "index.json").read_text())
    assert index["shards"] == {"train-000000.tar": 4, "train-000001.tar": 2}
    samples = {}
    for name in index["shards"]:
        for member, data in _members(str(out / name)).items():
            key, ext = member.split(".", 1)
            samples.setdefault(key, {})[ext] = data
    assert len(samples) == 6
    for sample in samples.values():
        assert set(sample) == {"jpg", "cls"}  # re-encoded as JPEG by --resize
        with Image.open(io.BytesIO(sample["jpg"])) as im:
            assert im.format == "JPEG" and im.size == (48, 32)  # shorter side 60 -> 32, aspect kept
    assert sorted(int(s["cls"]) for s in samples.values()) == [0, 0, 0, 1, 1, 1]


def test_pointcloud_with_num_points_and_maxcount(tmp_path):
    # docs/data.md: perceiver-lit-shards pointcloud /data/ModelNet40 --out data/modelnet40 --num-points 2048
    #               --maxcount 1000
    trimesh = pytest.importorskip("trimesh")
    for name, mesh in (("box", trimesh.creation.box(extents=(1, 2, 3))), ("sphere", trimesh.creation.icosphere(1))):
        for split, n in (("train", 3), ("test", 1)):
            os.makedirs(tmp_path / "src" / name / split)
            for i in range(n):
                mesh.export(tmp_path / "src" / name / split / f"{name}_{i:04d}.off")
    out = tmp_path / "out"
    assert cli.main(
        [
            "pointcloud",
            str(tmp_path / "src"),
            "--out",
            str(out),
            "--num-points",
            "64",
            "--maxcount",
            "4",
            "--no-progress",
        ]
    ) in (0, None)
    index = json.loads((out / "index.json").read_text())
    assert index["shards"] == {"train-000000.tar": 4, "train-000001.tar": 2, "test-000000.tar": 2}
    for member, data in _members(str(out / "test-000000.tar")).items():
        if not member.endswith(".cls"):
            points = np.load(io.BytesIO(data), allow_pickle=False) if member.endswith(".npy") else None
            assert points is not None and points.shape == (64, 3), (member, None if points is None else points.shape)
