"""Optical flow files and transforms in numpy: `.flo` (Middlebury / Sintel / FlyingChairs), KITTI's 16-bit PNG
flow, and the crops and flips that keep two frames and their flow aligned.

A flow field is `float32 (H, W, 2)` in pixels: (u, v) = (x, y) displacement of each pixel of frame 1 in frame 2.
A validity mask is `bool (H, W)` (KITTI's third channel; all True for dense ground truth).
Nothing here needs OpenCV: PIL reads 16-bit RGB PNGs as 8-bit (it drops the low byte), so KITTI's flow PNGs are
decoded with zlib and numpy (`read_png16`).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np

FLO_MAGIC = 202021.25  # the float32 the Middlebury format starts with ("PIEH" in ASCII)
FLO_UNKNOWN = 1e9  # Middlebury: |u| or |v| above this marks an unknown flow value
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------------ .flo
def decode_flo(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """`.flo` bytes -> float32 (H, W, 2). ValueError naming `name` for a wrong magic number or size."""
    if len(data) < 12:
        raise ValueError(f"{name}: not a .flo file: {len(data)} bytes, shorter than its 12-byte header")
    magic = struct.unpack("<f", data[:4])[0]
    if magic != np.float32(FLO_MAGIC):
        raise ValueError(
            f"{name}: not a .flo file: magic number {magic!r} (bytes {bytes(data[:4])!r}), "
            f"expected {FLO_MAGIC} ('PIEH')"
        )
    w, h = struct.unpack("<ii", data[4:12])
    if not (0 < w < 1 << 16 and 0 < h < 1 << 16):
        raise ValueError(f"{name}: .flo header says {w}x{h}: not a plausible image size")
    if len(data) - 12 != w * h * 8:
        raise ValueError(
            f"{name}: .flo header says {w}x{h} (expects {w * h * 8} bytes of flow), the file holds {len(data) - 12}"
        )
    return np.frombuffer(data, "<f4", w * h * 2, 12).reshape(h, w, 2).astype(np.float32)


def read_flo(path: str | Path) -> np.ndarray:
    """Read a `.flo` file -> float32 (H, W, 2)."""
    return decode_flo(Path(path).read_bytes(), str(path))


def encode_flo(flow: np.ndarray) -> bytes:
    """float32 (H, W, 2) -> `.flo` bytes (little-endian, as the Middlebury code writes them)."""
    h, w, c = flow.shape
    if c != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    return struct.pack("<fii", FLO_MAGIC, w, h) + np.ascontiguousarray(flow, "<f4").tobytes()


def write_flo(path: str | Path, flow: np.ndarray) -> None:
    Path(path).write_bytes(encode_flo(flow))


def split_unknown(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Middlebury's unknown values (|u| or |v| > 1e9) -> (flow with 0 there, valid mask bool (H, W))."""
    # only finite values above 1e9 are "unknown": NaN and inf stay, and the sample is refused as corrupt
    valid = (np.abs(flow) <= FLO_UNKNOWN).all(axis=-1) | ~np.isfinite(flow).all(axis=-1)
    if valid.all():
        return flow, valid
    flow = flow.copy()
    flow[~valid] = 0.0
    return flow, valid


# ------------------------------------------------------------------------------------------ 16-bit PNG (KITTI)
def _chunks(data: bytes, name: str):
    if data[:8] != _PNG_SIGNATURE:
        raise ValueError(f"{name}: not a PNG file (starts with {bytes(data[:8])!r})")
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        yield kind, data[pos + 8 : pos + 8 + length]
        pos += 12 + length


def _paeth_row(line: bytearray, prior: bytes, bpp: int) -> None:
    """Undo PNG's Paeth filter in place (sequential along the row: each byte needs its reconstructed left one)."""
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        b = prior[i]
        c = prior[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF


def _average_row(line: bytearray, prior: bytes, bpp: int) -> None:
    for i in range(len(line)):
        a = line[i - bpp] if i >= bpp else 0
        line[i] = (line[i] + ((a + prior[i]) >> 1)) & 0xFF


def read_png16(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """A 16-bit RGB PNG (KITTI's flow maps) -> uint16 (H, W, 3). Non-interlaced only; any filter types."""
    header = None
    idat = []
    for kind, body in _chunks(data, name):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            idat.append(body)
    if header is None:
        raise ValueError(f"{name}: PNG without an IHDR chunk")
    w, h, depth, color, _, _, interlace = header
    if depth != 16 or color != 2:
        raise ValueError(
            f"{name}: a KITTI flow PNG is 16-bit RGB (bit depth 16, colour type 2), this one has bit "
            f"depth {depth}, colour type {color}"
        )
    if interlace:
        raise ValueError(f"{name}: interlaced PNG: KITTI flow PNGs are not interlaced")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise ValueError(f"{name}: damaged PNG data: {e}") from None
    bpp, stride = 6, w * 6
    if len(raw) != h * (stride + 1):
        raise ValueError(f"{name}: PNG data holds {len(raw)} bytes, {w}x{h} 16-bit RGB needs {h * (stride + 1)}")
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride + 1)
    out = np.empty((h, stride), np.uint8)
    prior = np.zeros(stride, np.uint8)
    for y in range(h):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: a running sum (mod 256) per byte position within the pixel
            cur = np.cumsum(line.reshape(w, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kind == 2:  # Up
            cur = line + prior
        elif kind in (3, 4):
            buf = bytearray(line.tobytes())
            (_average_row if kind == 3 else _paeth_row)(buf, prior.tobytes(), bpp)
            cur = np.frombuffer(buf, np.uint8)
        else:
            raise ValueError(f"{name}: PNG row {y} has filter type {kind} (0-4 exist)")
        out[y] = cur
        prior = out[y]
    return out.view(">u2").reshape(h, w, 3).astype(np.uint16)


def _filter_rows(pixels: np.ndarray, filters: list[int], bpp: int) -> bytes:
    """PNG-filter rows of bytes (H, stride) with the given filter type per row (for writing)."""
    h, stride = pixels.shape
    x = pixels.astype(np.int32)
    out = []
    for y in range(h):
        kind = filters[y % len(filters)]
        line = x[y]
        prior = x[y - 1] if y else np.zeros(stride, np.int32)
        left = np.concatenate([np.zeros(bpp, np.int32), line[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prior[:-bpp]])
        if kind == 0:
            f = line
        elif kind == 1:
            f = line - left
        elif kind == 2:
            f = line - prior
        elif kind == 3:
            f = line - (left + prior) // 2
        else:
            p = left + prior - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - prior), np.abs(p - upleft)
            f = line - np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, upleft))
        out.append(bytes([kind]) + (f & 0xFF).astype(np.uint8).tobytes())
    return b"".join(out)


def write_png16(array: np.ndarray, filters: tuple[int, ...] = (0,)) -> bytes:
    """uint16 (H, W, 3) -> 16-bit RGB PNG bytes; `filters`: the PNG filter type of each row, cycled (tests use all
    five, as libpng's adaptive filtering does)."""
    h, w, c = array.shape
    if c != 3 or array.dtype != np.uint16:
        raise ValueError(f"write_png16 takes uint16 (H, W, 3), got {array.dtype} {array.shape}")

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    pixels = np.ascontiguousarray(array, ">u2").view(np.uint8).reshape(h, w * 6)
    return (
        _PNG_SIGNATURE
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(_filter_rows(pixels, list(filters), 6), 6))
        + chunk(b"IEND", b"")
    )


def decode_kitti_flow(data: bytes, name: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """KITTI flow PNG bytes -> (flow float32 (H, W, 2), valid bool (H, W)): u, v = (R, G - 2^15) / 64, valid = B > 0.
    Invalid pixels get flow 0."""
    png = read_png16(data, name)
    flow = (png[..., :2].astype(np.float32) - 2.0**15) / 64.0
    valid = png[..., 2] > 0
    flow[~valid] = 0.0
    return flow, valid


def encode_kitti_flow(flow: np.ndarray, valid: np.ndarray | None = None, filters: tuple[int, ...] = (0,)) -> bytes:
    """(flow (H, W, 2), valid (H, W)) -> KITTI flow PNG bytes (1/64 px steps, |flow| < 512 px)."""
    valid = np.ones(flow.shape[:2], bool) if valid is None else valid
    png = np.empty((*flow.shape[:2], 3), np.uint16)
    png[..., :2] = np.clip(np.round(flow * 64.0 + 2.0**15), 0, 2**16 - 1)
    png[..., 2] = valid
    return write_png16(png, filters)


# --------------------------------------------------------------------------------------------------- samples
def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """png/jpg/ppm bytes -> uint8 (H, W, 3) (PIL, fully decoded here so a truncated file raises here)."""
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "PPM"]) as img:
        img.load()
        return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))


def check_pair(
    frame1: np.ndarray, frame2: np.ndarray, flow: np.ndarray | None, valid: np.ndarray | None = None
) -> None:
    """ValueError when the two frames, the flow and the mask disagree in size, or the flow is not finite."""
    if frame1.shape != frame2.shape:
        raise ValueError(
            f"frames of different sizes in one pair: frame1 {frame1.shape[1]}x{frame1.shape[0]}, "
            f"frame2 {frame2.shape[1]}x{frame2.shape[0]} (W x H)"
        )
    if flow is None:
        return
    if flow.ndim != 3 or flow.shape[2] != 2 or flow.shape[:2] != frame1.shape[:2]:
        raise ValueError(
            f"flow of shape {flow.shape} disagrees with its frames: expected ({frame1.shape[0]}, {frame1.shape[1]}, 2)"
        )
    if valid is not None and valid.shape != frame1.shape[:2]:
        raise ValueError(f"valid mask of shape {valid.shape} disagrees with its frames {frame1.shape[:2]}")
    if not np.isfinite(flow).all():
        bad = int((~np.isfinite(flow)).any(axis=-1).sum())
        raise ValueError(f"flow has NaN or inf at {bad} pixels")


def crop_box(height: int, width: int, size: tuple[int, int], train: bool, rng: random.Random | None) -> tuple[int, int]:
    """Top-left (y, x) of a `size` (h, w) crop: random in training, centred in eval."""
    ch, cw = size
    if height < ch or width < cw:
        raise ValueError(f"frames are {width}x{height} (W x H), smaller than crop_size {cw}x{ch}")
    if train:
        return rng.randint(0, height - ch), rng.randint(0, width - cw)
    return (height - ch) // 2, (width - cw) // 2


def flip_pair(
    frames: np.ndarray, flow: np.ndarray, valid: np.ndarray, horizontal: bool, vertical: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror frames (2, H, W, 3), flow (H, W, 2) and valid (H, W) together. A horizontal flip maps x to W-1-x, so
    a displacement u becomes -u (v stays); a vertical flip negates v. Returns new arrays."""
    if horizontal:
        frames, flow, valid = frames[:, :, ::-1], flow[:, ::-1] * np.array([-1, 1], np.float32), valid[:, ::-1]
    if vertical:
        frames, flow, valid = frames[:, ::-1], flow[::-1] * np.array([1, -1], np.float32), valid[::-1]
    return np.ascontiguousarray(frames), np.ascontiguousarray(flow), np.ascontiguousarray(valid)


def backward_warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample `image` (H, W, C) at x + flow(x) bilinearly -> (warped float32 (H, W, C), inside bool (H, W)).

    With the true flow, warping frame 2 gives frame 1 at every pixel that stays visible: the consistency check the
    tests use for the synthetic data and for flips."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    x, y = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
    x0, y0 = np.minimum(np.floor(x).astype(int), w - 2), np.minimum(np.floor(y).astype(int), h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    img = image.astype(np.float32)
    out = (
        img[y0, x0] * (1 - fx) * (1 - fy)
        + img[y0, x0 + 1] * fx * (1 - fy)
        + img[y0 + 1, x0] * (1 - fx) * fy
        + img[y0 + 1, x0 + 1] * fx * fy
    )
    return out, inside
