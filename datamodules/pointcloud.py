"""Point clouds (npy (N, 3)) -> float32 (B, num_points, 3), zero-mean, unit-cube normalised."""

from __future__ import annotations

from typing import Any

import torch

from datamodules.streaming import StreamingDataModule
from datamodules.transforms import pointcloud as T


class PointCloudDataModule(StreamingDataModule):
    """ModelNet40-style point clouds from `perceiver-lit-shards pointcloud`.

    Args (plus StreamingDataModule's):
        num_points: points per sample (random subset in training, the first ones in eval: writers store
            surface samples in random order, so the first n are a uniform subset).
        jitter: per-point scale jitter range in training (the paper: 0.99-1.01); None = off.
    """

    input_exts = ("npy",)

    def __init__(
        self,
        num_points: int = 2048,
        jitter: tuple[float, float] | None = (0.99, 1.01),
        num_classes: int = 40,
        **kwargs: Any,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        self.num_points, self.jitter = num_points, tuple(jitter) if jitter is not None else None
        self.input_shape = (num_points, 3)

    def iter_file_samples(self, path: str):
        """predict_files: `.npy` (N, 3) arrays as they are; meshes (.off/.ply/.obj/.stl) sampled on their surface
        at num_points, as the pointcloud writer samples them."""
        from datamodules.shards.pointcloud import MESH_EXTS, Encode

        if not path.lower().endswith(MESH_EXTS):
            yield from super().iter_file_samples(path)
            return
        yield {"__key__": path, "__url__": path, "npy": Encode(self.num_points)((path, -1))["npy"]}

    def decode_inputs(self, sample: dict[str, Any], train: bool) -> torch.Tensor:
        pts = T.decode_points(sample[self.find_ext(sample)])
        pts = T.sample_points(pts, self.num_points, self.rng if train else None)
        pts = T.normalize(pts)
        if train and self.jitter is not None:
            pts = T.scale_jitter(pts, self.rng, *self.jitter)
        return torch.from_numpy(pts.astype("float32", copy=False))  # (N, 3)
