"""`perceiver-lit-shards synthetic flow`: seeded frame pairs with exact optical flow, in the spirit of AutoFlow
(Sun et al. 2021): textured layers moving under random affine motions and smooth deformations, with occlusions.

A sample is a background layer and 1-3 foreground layers (ellipses, polygons, or Fashion-MNIST silhouettes when
Debian's dataset-fashion-mnist is installed), each with its own procedural texture (value noise at three scales
plus a grating, in random colours) defined in frame 1's coordinates. Each layer moves by

    M(p) = A (S2 (S1 (p - c))) + c + t,   S1: (x, y) -> (x + f(y), y),   S2: (x, y) -> (x, y + g(x)),

an affine map A (rotation, scale, shear) about the layer's centre c, a translation t, and two smooth shears f, g
(sums of sines): the shears make the motion non-rigid and are exactly invertible, so both frames are rendered by
sampling the textures at exact positions. Frame 1 at pixel x shows the topmost layer whose mask covers x; frame 2
at pixel y shows the topmost layer i whose mask covers M_i^-1(y) (backward warping of each layer). The flow at x
is M_i(x) - x for the layer visible at x in frame 1: exact, also where that point is hidden in frame 2 (occluded
by a layer in front, or moved out of the frame), as in Sintel's and FlyingChairs' ground truth.

The files are written in FlyingChairs' layout (`data/NNNNN_img1.ppm`, `_img2.ppm`, `_flow.flo`,
`FlyingChairs_train_val.txt`: 1 = train, 2 = val) and sharded by `perceiver-lit-shards flow chairs`' encoder: the
synthetic data takes the path real FlyingChairs takes.

(About 400 lines because textures, motions, layers and the renderer are one generator, read together.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_SIZE = (64, 64)  # (H, W): the size the CPU demo trains at (docs/data.md)


def parse_size(text: str) -> tuple[int, int]:
    """'64' -> (64, 64); '96x128' -> (96, 128) (H x W)."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 8:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or HxW, each at least 8 (e.g. 64 or 96x128)")
    return parts[0], parts[1]


# -------------------------------------------------------------------------------------------------- textures
class Texture:
    """A random colour texture defined on the whole plane: value noise at three cell sizes (bilinear on random
    periodic grids) plus a sine grating, mapped through two random colours. `__call__(x, y)` -> float32 (..., 3)
    in [0, 255]."""

    def __init__(self, rng: np.random.Generator, scale: float):
        self.grids = [
            (rng.random((16, 16)).astype(np.float32), cell * scale, weight)
            for cell, weight in ((12.0, 0.5), (5.0, 0.3), (2.5, 0.2))
        ]
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(0.15, 0.6) / scale
        self.grating = (np.cos(angle) * freq, np.sin(angle) * freq, rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5))
        self.colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        if np.abs(self.colours[0] - self.colours[1]).sum() < 150:  # enough contrast to see the motion
            self.colours[1] = 255 - self.colours[0]

    def intensity(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        total = np.zeros(x.shape, np.float32)
        for grid, cell, weight in self.grids:
            total += weight * _bilinear_periodic(grid, x / cell, y / cell)
        fx, fy, phase, amount = self.grating
        total = (1 - amount) * total + amount * (0.5 + 0.5 * np.sin(fx * x + fy * y + phase))
        return np.clip((total - 0.5) * 1.6 + 0.5, 0, 1)  # more contrast than the average of the noise gives

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        t = self.intensity(x, y)[..., None]
        return self.colours[0] * (1 - t) + self.colours[1] * t


def _bilinear_periodic(grid: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample a periodic grid (h, w) at real positions (in grid cells), bilinearly."""
    h, w = grid.shape
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    x0, y0 = x0.astype(np.int64) % w, y0.astype(np.int64) % h
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    return (grid[y0, x0] * (1 - fx) + grid[y0, x1] * fx) * (1 - fy) + (grid[y1, x0] * (1 - fx) + grid[y1, x1] * fx) * fy


def _bilinear_zero(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample an image (h, w) at real pixel positions, bilinearly, with zeros outside."""
    h, w = image.shape
    padded = np.zeros((h + 2, w + 2), np.float32)
    padded[1:-1, 1:-1] = image
    x, y = np.clip(x + 1, 0, w + 0.999), np.clip(y + 1, 0, h + 0.999)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    x1, y1 = np.minimum(x0 + 1, w + 1), np.minimum(y0 + 1, h + 1)
    return (padded[y0, x0] * (1 - fx) + padded[y0, x1] * fx) * (1 - fy) + (
        padded[y1, x0] * (1 - fx) + padded[y1, x1] * fx
    ) * fy


# ---------------------------------------------------------------------------------------------------- motion
class Motion:
    """M(p) = A (S2 (S1 (p - c))) + c + t with exact inverse (module docstring).

    Args:
        rng: the sample's generator.
        centre: c (x, y).
        translation, rotation_deg, scale, deform: the largest |t| per axis (px), |angle|, |log scale|, and shear
            amplitude (px).
        period: the shears' typical wavelength (px).
    """

    def __init__(
        self,
        rng: np.random.Generator,
        centre: tuple[float, float],
        translation: float,
        rotation_deg: float,
        scale: float,
        deform: float,
        period: float,
    ):
        self.c = np.asarray(centre, np.float64)
        self.t = rng.uniform(-translation, translation, 2)
        angle = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg))
        sx, sy = np.exp(rng.uniform(-scale, scale, 2) * np.array([1.0, 0.3]) + rng.uniform(-scale, scale))
        shear = rng.uniform(-0.5, 0.5) * scale
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        self.A = rot @ np.array([[sx, shear], [0.0, sy]])
        self.A_inv = np.linalg.inv(self.A)
        # f, g: two sines each, amplitude up to `deform` px
        self.f = [
            (rng.uniform(0, deform / 2), 2 * np.pi / rng.uniform(period / 2, period * 2), rng.uniform(0, 7))
            for _ in range(2)
        ]
        self.g = [
            (rng.uniform(0, deform / 2), 2 * np.pi / rng.uniform(period / 2, period * 2), rng.uniform(0, 7))
            for _ in range(2)
        ]

    @staticmethod
    def _wave(terms: list, s: np.ndarray) -> np.ndarray:
        return sum(a * np.sin(k * s + phase) for a, k, phase in terms)

    def forward(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame-1 positions -> their frame-2 positions."""
        x, y = x - self.c[0], y - self.c[1]
        x = x + self._wave(self.f, y)  # S1
        y = y + self._wave(self.g, x)  # S2
        a = self.A
        return (a[0, 0] * x + a[0, 1] * y + self.c[0] + self.t[0], a[1, 0] * x + a[1, 1] * y + self.c[1] + self.t[1])

    def inverse(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame-2 positions -> the frame-1 positions that move there (exact)."""
        x, y = x - self.c[0] - self.t[0], y - self.c[1] - self.t[1]
        b = self.A_inv
        x, y = b[0, 0] * x + b[0, 1] * y, b[1, 0] * x + b[1, 1] * y
        y = y - self._wave(self.g, x)  # S2^-1
        x = x - self._wave(self.f, y)  # S1^-1
        return x + self.c[0], y + self.c[1]


# ---------------------------------------------------------------------------------------------------- layers
class Layer:
    """A texture, a mask (None: covers everything) in frame-1 coordinates, and a motion."""

    def __init__(self, texture: Texture, motion: Motion, mask=None):
        self.texture, self.motion, self.mask = texture, motion, mask

    def covers(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.ones(x.shape, bool) if self.mask is None else self.mask(x, y)


def _ellipse(rng: np.random.Generator, cx: float, cy: float, radius: float):
    rx, ry = radius * rng.uniform(0.6, 1.3, 2)
    angle = rng.uniform(0, np.pi)
    ca, sa = np.cos(angle), np.sin(angle)

    def mask(x, y):
        u, v = (x - cx) * ca + (y - cy) * sa, -(x - cx) * sa + (y - cy) * ca
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0

    return mask


def _polygon(rng: np.random.Generator, cx: float, cy: float, radius: float):
    """A star-shaped polygon: the mask is r(angle) <= the piecewise-linear radius between random vertices."""
    n = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.5, 1.2, n)

    def mask(x, y):
        dx, dy = x - cx, y - cy
        theta = np.arctan2(dy, dx) % (2 * np.pi)
        r = np.interp(
            theta,
            np.concatenate([angles - 2 * np.pi, angles, angles + 2 * np.pi]),
            np.concatenate([radii, radii, radii]),
        )
        return dx * dx + dy * dy <= r * r

    return mask


def _silhouette(image: np.ndarray, cx: float, cy: float, radius: float):
    """A Fashion-MNIST item as a mask: its pixels above 10% of full scale, scaled so 28 px span 2 * radius * 1.3."""
    zoom = 2 * radius * 1.3 / 28.0
    img = image.astype(np.float32) / 255.0

    def mask(x, y):
        return _bilinear_zero(img, (x - cx) / zoom + 13.5, (y - cy) / zoom + 13.5) > 0.1

    return mask


def _fashion_images() -> np.ndarray | None:
    if not os.path.isdir(FASHION_DIR):
        return None
    from datamodules.shards.fashion_mnist import read_idx

    try:
        return read_idx(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte"))
    except (OSError, ValueError):
        return None


class FlowGenerator:
    """Seeded frame pairs with exact flow.

    Args:
        size: (H, W).
        max_motion: the background's largest translation per axis (px); foreground layers move up to 1.5x that.
        textures: "procedural", "fashion-mnist" (foreground silhouettes from Fashion-MNIST; needs the Debian
            package) or "auto" (Fashion-MNIST silhouettes for some layers when installed).
        max_layers: the most foreground layers (1 to max_layers are drawn; 0: the background alone).
    """

    def __init__(
        self, size: tuple[int, int] = DEFAULT_SIZE, max_motion: float = 4.0, textures: str = "auto", max_layers: int = 3
    ):
        if textures not in ("auto", "procedural", "fashion-mnist"):
            raise ValueError(f"textures must be 'auto', 'procedural' or 'fashion-mnist', got {textures!r}")
        self.size, self.max_motion, self.max_layers = tuple(size), float(max_motion), max(0, int(max_layers))
        self.fashion = None if textures == "procedural" else _fashion_images()
        if textures == "fashion-mnist" and self.fashion is None:
            raise FileNotFoundError(
                f"textures='fashion-mnist' needs {FASHION_DIR} (apt-get install dataset-fashion-mnist)"
            )
        self.textures = textures
        h, w = self.size
        self.ys, self.xs = np.mgrid[0:h, 0:w].astype(np.float64)

    def layers(self, rng: np.random.Generator) -> list[Layer]:
        """Background first, then the foreground layers back to front."""
        h, w = self.size
        scale = min(h, w) / 64.0  # texture and deformation scales grow with the image
        m = self.max_motion
        out = [Layer(Texture(rng, scale), Motion(rng, (w / 2, h / 2), m, 4.0, 0.04, 1.0 * scale, 48 * scale))]
        for _ in range(int(rng.integers(1, self.max_layers + 1)) if self.max_layers else 0):
            cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
            radius = rng.uniform(0.12, 0.28) * min(h, w)
            use_fashion = self.fashion is not None and (self.textures == "fashion-mnist" or rng.random() < 0.5)
            if use_fashion:
                mask = _silhouette(self.fashion[int(rng.integers(len(self.fashion)))], cx, cy, radius)
            else:
                mask = (_ellipse if rng.random() < 0.5 else _polygon)(rng, cx, cy, radius)
            motion = Motion(rng, (cx, cy), 1.5 * m, 10.0, 0.08, 0.7 * scale, 32 * scale)
            out.append(Layer(Texture(rng, scale * rng.uniform(0.5, 1.0)), motion, mask))
        return out

    def sample(self, seed: int | np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pair: (frame1 uint8 (H, W, 3), frame2 uint8 (H, W, 3), flow float32 (H, W, 2))."""
        rng = np.random.default_rng(seed)
        layers = self.layers(rng)
        x, y = self.xs, self.ys
        frame1 = np.empty((*self.size, 3), np.float32)
        frame2 = np.empty((*self.size, 3), np.float32)
        flow = np.empty((*self.size, 2), np.float64)
        todo1 = np.ones(self.size, bool)  # pixels no layer in front has claimed yet
        todo2 = np.ones(self.size, bool)
        for layer in reversed(layers):  # front to back
            if todo1.any():
                px, py = x[todo1], y[todo1]
                hit = layer.covers(px, py)
                idx = tuple(i[hit] for i in np.nonzero(todo1))
                px, py = px[hit], py[hit]
                frame1[idx] = layer.texture(px, py)
                qx, qy = layer.motion.forward(px, py)
                flow[idx] = np.stack([qx - px, qy - py], axis=-1)
                todo1[idx] = False
            if todo2.any():
                sx, sy = layer.motion.inverse(x[todo2], y[todo2])  # where these frame-2 pixels were in frame 1
                hit = layer.covers(sx, sy)
                idx = tuple(i[hit] for i in np.nonzero(todo2))
                frame2[idx] = layer.texture(sx[hit], sy[hit])
                todo2[idx] = False
        return (
            np.clip(np.rint(frame1), 0, 255).astype(np.uint8),
            np.clip(np.rint(frame2), 0, 255).astype(np.uint8),
            flow.astype(np.float32),
        )


# --------------------------------------------------------------------------------------------------- files
def write_ppm(path: Path, image: np.ndarray) -> None:
    """uint8 (H, W, 3) -> binary PPM (P6), FlyingChairs' frame format."""
    h, w, _ = image.shape
    path.write_bytes(f"P6\n{w} {h}\n255\n".encode() + np.ascontiguousarray(image).tobytes())


def _write_pairs(job: tuple[Path, int, list[int], tuple[int, int], float, str, int]) -> None:
    from datamodules.transforms.flow import write_flo

    data, seed, indices, size, max_motion, textures, max_layers = job
    gen = FlowGenerator(size, max_motion, textures, max_layers)
    for i in indices:
        frame1, frame2, flow = gen.sample(np.random.SeedSequence([seed, i]))
        stem = f"{i + 1:05d}"  # FlyingChairs numbers from 00001
        write_ppm(data / f"{stem}_img1.ppm", frame1)
        write_ppm(data / f"{stem}_img2.ppm", frame2)
        write_flo(data / f"{stem}_flow.flo", flow)


def make_flow(
    root: Path,
    n: int,
    seed: int,
    size: tuple[int, int] = DEFAULT_SIZE,
    max_motion: float = 4.0,
    textures: str = "auto",
    val: set[int] | frozenset = frozenset(),
    workers: int = 1,
    max_layers: int = 3,
    **_,
) -> Path:
    """`root/data/NNNNN_img1.ppm, _img2.ppm, _flow.flo` for N pairs and `root/FlyingChairs_train_val.txt` (2 for
    the indices in `val`, else 1), in `workers` processes. Sample i depends only on (seed, i). Returns root."""
    import multiprocessing as mp

    FlowGenerator(size, max_motion, textures, max_layers)  # bad options fail here, once
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    jobs = [
        (data, seed, list(range(n))[k :: max(workers, 1)], tuple(size), max_motion, textures, max_layers)
        for k in range(max(workers, 1))
    ]
    if workers > 1 and n > 1:
        with mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(workers) as pool:
            pool.map(_write_pairs, jobs)
    else:
        for job in jobs:
            _write_pairs(job)
    (root / "FlyingChairs_train_val.txt").write_text("".join("2\n" if i in val else "1\n" for i in range(n)))
    return root


def synthetic_flow(args: argparse.Namespace, files: Path) -> list:
    """`synthetic flow`: files in FlyingChairs' layout, then train (`--prefix`) and val shards (`--val-fraction`)."""
    from datamodules.shards.flow import EncodePair, chairs_items
    from datamodules.shards.synthetic import _write
    from datamodules.shards.writer import split_items

    _, val = (
        split_items(range(args.num_samples), args.val_fraction, seed=args.seed) if args.val_fraction > 0 else (None, [])
    )
    make_flow(
        files,
        args.num_samples,
        args.seed,
        args.flow_size,
        args.max_motion,
        args.textures,
        set(val),
        args.workers,
        args.max_layers,
    )
    print(
        f"synthetic flow: {args.num_samples} pairs of {args.flow_size[0]}x{args.flow_size[1]} (H x W) under "
        f"{files} (FlyingChairs layout)"
    )
    if args.files_only:
        return []
    splits = chairs_items(str(files), keyed=False)
    return _write(args, {"train": splits["train"], "val": splits["val"]}, EncodePair())


def add_flow_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("flow")
    g.add_argument(
        "--flow-size",
        type=parse_size,
        default=DEFAULT_SIZE,
        metavar="N|HxW",
        help="frame size, e.g. 64 or 96x128 (default 64: the CPU demo's size)",
    )
    g.add_argument(
        "--max-motion",
        type=float,
        default=4.0,
        help="the background's largest shift per axis in px (foreground layers: 1.5x)",
    )
    g.add_argument(
        "--max-layers",
        type=int,
        default=3,
        help="the most foreground layers per pair (1 to N drawn; 0: background only)",
    )
    g.add_argument(
        "--textures",
        default="auto",
        choices=("auto", "procedural", "fashion-mnist"),
        help="foreground shapes: procedural, Fashion-MNIST silhouettes, or both when installed (auto)",
    )
