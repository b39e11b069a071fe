"""`perceiver-lit-shards pointcloud`: ModelNet40-style meshes root/<class>/{train,test}/<mesh>.off -> shards.

Meshes (.off; .ply/.obj/.stl via trimesh) are sampled uniformly on the surface (area-weighted) to N points,
stored as `npy` float32 (N, 3) in random order, plus `cls`. Splits come from the train/test subfolders (a tree
without them goes to `--prefix`). Classes: sorted folder names, written to <out>/classes.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os

import numpy as np

from datamodules.class_names import write_class_names
from datamodules.shards.writer import ShardSummary, write_shards

MESH_EXTS = (".off", ".ply", ".obj", ".stl")
SPLITS = ("", "train", "test", "val", "valid", "validation")  # "": meshes right in the class folder


def read_off(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse an OFF file (vertices float (V, 3), triangle faces int (F, 3)); tolerates ModelNet40's 'OFF123 ...'
    first line. Polygons are fan-triangulated."""
    with open(path) as f:
        tokens = f.read().split()
    if not tokens or not tokens[0].startswith("OFF"):
        raise ValueError(f"{path}: not an OFF file")
    head = tokens[0][3:]
    rest = ([head] if head else []) + tokens[1:]
    nv, nf = int(rest[0]), int(rest[1])
    pos = 3
    verts = np.array(rest[pos : pos + 3 * nv], dtype=np.float64).reshape(nv, 3)
    pos += 3 * nv
    faces = []
    for _ in range(nf):
        k = int(rest[pos])
        idx = [int(i) for i in rest[pos + 1 : pos + 1 + k]]
        pos += 1 + k
        faces += [(idx[0], idx[j], idx[j + 1]) for j in range(1, k - 1)]
    faces_arr = np.array(faces, dtype=np.int64).reshape(-1, 3)
    outside = faces_arr[(faces_arr < 0) | (faces_arr >= nv)]
    if outside.size:
        raise ValueError(f"{path}: face vertex index {int(outside[0])} outside [0, {nv}) (the file has {nv} vertices)")
    return verts, faces_arr


def load_mesh(path: str) -> tuple[np.ndarray, np.ndarray]:
    if path.lower().endswith(".off"):
        return read_off(path)
    import trimesh

    mesh = trimesh.load(path, force="mesh")
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def sample_surface(verts: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points uniform on the surface: faces drawn by area, then uniform barycentric coordinates."""
    if len(faces) == 0:
        raise ValueError("mesh has no faces")
    tri = verts[faces]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not area.sum() > 0:
        raise ValueError("mesh has zero surface area")
    f = rng.choice(len(faces), size=n, p=area / area.sum())
    u, v = rng.random((2, n))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[f]
    return (t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])).astype(np.float32)


class Encode:
    """Picklable encoder: (path, label) -> {"npy": float32 (N, 3), "cls"}; the seed comes from the path."""

    def __init__(self, num_points: int, seed: int = 0):
        self.num_points, self.seed = num_points, seed

    def __call__(self, item: tuple[str, int]) -> dict[str, bytes]:
        path, label = item
        verts, faces = load_mesh(path)
        digest = int.from_bytes(hashlib.sha1(os.path.basename(path).encode()).digest()[:8], "little")
        pts = sample_surface(verts, faces, self.num_points, np.random.default_rng([self.seed, digest]))
        buf = io.BytesIO()
        np.save(buf, pts, allow_pickle=False)
        return {"npy": buf.getvalue(), "cls": str(label).encode()}


def list_meshes(root: str) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """{split: [(path, label)]} from root/<class>/[<split>/]<mesh>, and the class names."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"mesh folder {root!r} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root!r} has no class subfolders (expected root/<class>/[train|test/]<mesh>.off)")
    splits: dict[str, list[tuple[str, int]]] = {}
    for label, name in enumerate(classes):
        for dirpath, _, files in os.walk(os.path.join(root, name)):
            rel = os.path.relpath(dirpath, os.path.join(root, name))
            split = rel.split(os.sep)[0] if rel != "." else ""
            if split not in SPLITS and any(f.lower().endswith(MESH_EXTS) for f in files):
                raise ValueError(
                    f"{os.path.join(root, name, split)!r}: meshes in a folder {split!r} where the layout "
                    f"root/<class>/[train|test|val/]<mesh>.off has a split folder or none (classes found: "
                    f"{classes[:5]}{' ...' if len(classes) > 5 else ''}); is the root one level too high? "
                    f"Try {os.path.join(root, name)!r}"
                )
            for f in sorted(files):
                if f.lower().endswith(MESH_EXTS):
                    splits.setdefault(split, []).append((os.path.join(dirpath, f), label))
    if not splits:
        raise ValueError(f"{root!r}: no {MESH_EXTS} meshes under the class folders")
    return splits, classes


def run(args: argparse.Namespace) -> list[ShardSummary]:
    from datamodules.shards.cli import writer_kwargs

    splits, classes = list_meshes(args.root)
    os.makedirs(args.out, exist_ok=True)
    write_class_names(args.out, classes)
    encode = Encode(args.num_points, args.seed)
    return [
        write_shards(items, encode, args.out, split or args.prefix, **writer_kwargs(args))
        for split, items in sorted(splits.items())
    ]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from datamodules.shards.cli import add_common_args, add_writer_parser

    p = add_writer_parser(subparsers, "pointcloud", "root/<class>/{train,test}/<mesh>.off -> point-cloud shards")
    p.add_argument("root", help="ModelNet40-style directory")
    p.add_argument("--num-points", type=int, default=2048, help="surface samples per mesh")
    add_common_args(p)
    p.set_defaults(func=run)
