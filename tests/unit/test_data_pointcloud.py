"""Point clouds: .off meshes (trimesh) -> surface samples -> shards -> (B, N, 3) normalised batches."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from datamodules.pointcloud import PointCloudDataModule
from datamodules.shards.pointcloud import read_off, sample_surface
from datamodules.transforms import pointcloud as T

trimesh = pytest.importorskip("trimesh")


def test_read_off_matches_trimesh(tmp_path):
    mesh = trimesh.creation.icosphere(subdivisions=1)
    path = tmp_path / "ball.off"
    mesh.export(path)
    verts, faces = read_off(str(path))
    assert np.allclose(verts, mesh.vertices, atol=1e-6) and (faces == mesh.faces).all()
    # ModelNet40's broken header: counts glued to "OFF"
    path.write_text("OFF3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    verts, faces = read_off(str(path))
    assert verts.shape == (3, 3) and faces.tolist() == [[0, 1, 2]]


def test_surface_samples_lie_on_the_box():
    mesh = trimesh.creation.box(extents=(2, 2, 2))
    pts = sample_surface(mesh.vertices, mesh.faces, 1000, np.random.default_rng(0))
    assert pts.shape == (1000, 3) and pts.dtype == np.float32
    assert np.allclose(np.abs(pts).max(axis=1), 1, atol=1e-5)  # every point on a face of the cube


def test_normalize_and_jitter():
    pts = np.random.default_rng(0).random((100, 3)).astype(np.float32) * 7 + 3
    n = T.normalize(pts)
    assert np.allclose(n.mean(0), 0, atol=1e-5) and np.isclose(np.abs(n).max(), 0.5)
    j = T.scale_jitter(n, random.Random(0))
    ratio = np.linalg.norm(j, axis=1) / np.linalg.norm(n, axis=1)
    assert ratio.min() >= 0.99 - 1e-6 and ratio.max() <= 1.01 + 1e-6 and ratio.std() > 0


def test_round_trip(pointcloud_shards):
    dm = PointCloudDataModule(
        train_urls=pointcloud_shards.train_urls,
        val_urls=pointcloud_shards.test_urls,
        num_points=256,
        num_classes=pointcloud_shards.num_classes,
        batch_size=4,
        num_workers=0,
    )
    assert dm.input_shape == (256, 3)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["inputs"].shape == (4, 256, 3) and train["inputs"].dtype == torch.float32
    val = list(dm.val_dataloader())
    x = torch.cat([b["inputs"] for b in val])
    assert x.shape == (pointcloud_shards.num_test, 256, 3)
    assert torch.allclose(x.mean(1), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.abs().amax(dim=(1, 2)), torch.full((len(x),), 0.5))
    assert set(torch.cat([b["target"] for b in val]).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("ext", ["ply", "obj"])
def test_other_mesh_formats_via_trimesh(tmp_path, ext):
    from datamodules.shards.pointcloud import load_mesh

    mesh = trimesh.creation.box(extents=(1, 2, 3))
    mesh.export(tmp_path / f"box.{ext}")
    verts, faces = load_mesh(str(tmp_path / f"box.{ext}"))
    pts = sample_surface(verts, faces, 200, np.random.default_rng(1))
    assert np.allclose(np.abs(pts).max(0), (0.5, 1, 1.5), atol=0.05)


def test_read_off_refuses_face_indices_outside_the_vertices(tmp_path):
    path = tmp_path / "neg.off"
    path.write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 -1\n")  # numpy would wrap -1 to the last vertex
    with pytest.raises(ValueError, match=r"neg.off: face vertex index -1 outside \[0, 3\)"):
        read_off(str(path))
    path.write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 3\n")
    with pytest.raises(ValueError, match=r"index 3 outside"):
        read_off(str(path))


def test_a_modelnet_root_one_level_too_high_is_refused(tmp_path):
    from datamodules.shards.pointcloud import list_meshes

    mesh = trimesh.creation.box()
    for cls in ("chair", "desk"):
        (tmp_path / "ModelNet40" / cls / "train").mkdir(parents=True)
        mesh.export(tmp_path / "ModelNet40" / cls / "train" / f"{cls}_0001.off")
    with pytest.raises(ValueError, match=r"one level too high\? Try .*ModelNet40'"):
        list_meshes(str(tmp_path))  # classes would be ['ModelNet40'], splits the classes
    splits, classes = list_meshes(str(tmp_path / "ModelNet40"))
    assert classes == ["chair", "desk"] and sorted(splits) == ["train"] and len(splits["train"]) == 2
