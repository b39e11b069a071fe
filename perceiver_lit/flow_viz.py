"""Optical flow as colour: the Middlebury colour wheel (Baker et al., "A Database and Evaluation Methodology for
Optical Flow", IJCV 2011; their `flowToColor` / `computeColor`), in numpy.

The direction of a flow vector picks the hue on a wheel of 55 colours (red -> yellow -> green -> cyan -> blue ->
magenta, in 15, 6, 4, 11, 13, 6 steps), its length the saturation: zero flow is white, the largest flow (or
`max_flow`) the full colour. In image coordinates (v down), flow to the right is red, down yellow-orange, left
cyan-blue, up blue-violet. Invalid pixels (KITTI's mask) are black.

    rgb = flow_to_color(flow)                      # (H, W, 2) float, pixels -> (H, W, 3) uint8
    save_flow_png(flow, "flow.png", valid=valid)
"""

from __future__ import annotations

import os

import numpy as np

# Baker et al.'s segment lengths: chosen for perceptual uniformity between the primary and secondary colours.
RY, YG, GC, CB, BM, MR = 15, 6, 4, 11, 13, 6


def make_colorwheel() -> np.ndarray:
    """The 55 wheel colours, (55, 3) float in 0..255, as Middlebury's `makeColorwheel`."""
    wheel = np.zeros((RY + YG + GC + CB + BM + MR, 3))
    col = 0
    for n, fixed, rising, falling in (
        (RY, 0, 1, None),
        (YG, 1, None, 0),
        (GC, 1, 2, None),
        (CB, 2, None, 1),
        (BM, 2, 0, None),
        (MR, 0, None, 2),
    ):
        ramp = np.floor(255 * np.arange(n) / n)
        wheel[col : col + n, fixed] = 255
        if rising is not None:
            wheel[col : col + n, rising] = ramp
        else:
            wheel[col : col + n, falling] = 255 - ramp
        col += n
    return wheel


_WHEEL = make_colorwheel()


def flow_to_color(flow: np.ndarray, valid: np.ndarray | None = None, max_flow: float | None = None) -> np.ndarray:
    """Flow (H, W, 2) (u right, v down, any unit) -> an RGB image (H, W, 3) uint8 in the Middlebury coding.

    Args:
        flow: the flow field; NaN / inf pixels are treated as invalid.
        valid: bool (H, W); False pixels are black. None: all valid.
        max_flow: the length that gets the full colour (pass the ground truth's to draw a prediction on the same
            scale); longer vectors are darkened (x 0.75), as Middlebury does. None: the largest valid length.
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow_to_color: flow must be (H, W, 2), got {flow.shape}")
    ok = np.isfinite(flow).all(-1)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    u = np.where(ok, flow[..., 0], 0.0)
    v = np.where(ok, flow[..., 1], 0.0)
    rad = np.sqrt(u * u + v * v)
    if max_flow is None:
        max_flow = float(rad.max()) if ok.any() else 0.0
    scale = max(float(max_flow), np.finfo(np.float64).eps)
    u, v, rad = u / scale, v / scale, rad / scale
    n = len(_WHEEL)
    a = np.arctan2(-v, -u) / np.pi  # -1..1
    fk = (a + 1) / 2 * (n - 1)  # 0..n-1: position on the wheel
    k0 = np.floor(fk).astype(np.int64)
    k1 = (k0 + 1) % n
    f = fk - k0
    out = np.zeros((*u.shape, 3), dtype=np.uint8)
    inside = rad <= 1
    for i in range(3):
        c = (1 - f) * _WHEEL[k0, i] / 255 + f * _WHEEL[k1, i] / 255
        c = np.where(inside, 1 - rad * (1 - c), c * 0.75)  # towards white with shorter vectors
        # + 1e-9: 255 * (43 / 255) is 42.99999999999999 in floating point; Middlebury's integers stay exact
        out[..., i] = np.floor(255 * c + 1e-9).astype(np.uint8)
    out[~ok] = 0
    return out


def frame_to_uint8(frame: np.ndarray) -> np.ndarray:
    """A frame in [-1, 1] (the flow batch's layout, (H, W, 3)) -> uint8 RGB."""
    return np.clip((np.asarray(frame, dtype=np.float32) + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def save_png(rgb: np.ndarray, path: str | os.PathLike) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb)).save(path)


def save_flow_png(
    flow: np.ndarray, path: str | os.PathLike, valid: np.ndarray | None = None, max_flow: float | None = None
) -> None:
    """Write flow (H, W, 2) as a colour-wheel PNG (see flow_to_color)."""
    save_png(flow_to_color(flow, valid, max_flow), path)
