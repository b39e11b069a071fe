"""Point-cloud transforms (numpy): safe npy decode, fixed-size point sampling, normalisation, scale jitter."""

from __future__ import annotations

import random

import numpy as np

from datamodules.transforms.npy import decode_npy


def decode_points(data: bytes) -> np.ndarray:
    """npy bytes -> float32 (N, 3); an object array is rejected, never unpickled."""
    pts = decode_npy(data)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
        raise ValueError(f"point cloud must be (N, 3), got {pts.shape}")
    pts = pts.astype(np.float32, copy=False)
    if not np.isfinite(pts).all():
        raise ValueError("point cloud holds NaN/inf")
    return pts


def sample_points(pts: np.ndarray, n: int, rng: random.Random | None) -> np.ndarray:
    """Exactly n points: a random subset (with replacement if fewer) in training, the first n in eval."""
    if rng is None:
        idx = np.arange(n) % len(pts)
    else:
        g = np.random.default_rng(rng.getrandbits(64))
        idx = g.choice(len(pts), n, replace=len(pts) < n)
    return pts[idx]


def normalize(pts: np.ndarray) -> np.ndarray:
    """Zero-mean, then scale so the largest |coordinate| is 0.5 (the cloud fits the unit cube centred at 0)."""
    pts = pts - pts.mean(axis=0, keepdims=True)
    extent = np.abs(pts).max()
    return pts / (2 * extent) if extent > 0 else pts


def scale_jitter(pts: np.ndarray, rng: random.Random, low: float = 0.99, high: float = 1.01) -> np.ndarray:
    """The paper's per-point scale jitter: each point multiplied by its own factor in [low, high]."""
    g = np.random.default_rng(rng.getrandbits(64))
    return pts * g.uniform(low, high, size=(len(pts), 1)).astype(np.float32)
