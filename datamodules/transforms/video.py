"""Video transforms: decode mp4 bytes (decord, PyAV fallback), sample T frames at a stride, resize, crop, normalise.

Shapes: decoded frames are `uint8 (T, H, W, C)`; the transformed clip is `float32 (T, H, W, C)` (channels-last,
as the batch contract in docs/architecture.md states). Audio inside an mp4 is decoded with PyAV to mono float32.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from lightning_utilities.core.imports import RequirementCache

_DECORD = RequirementCache("decord")
_AV = RequirementCache("av")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Frames = np.ndarray | torch.Tensor  # a clip's pixels, `uint8 (T, H, W, C)`, as decoded (numpy) or as a tensor
CropSize = int | tuple[int, int]  # an int: a square crop; else (H, W)


def video_backend(preferred: str = "auto") -> str:
    """Pick the decoder: `decord` when installed (fast, seeks by index), else `pyav`; raise naming both if neither."""
    if preferred not in ("auto", "decord", "pyav"):
        raise ValueError(f"video backend must be 'auto', 'decord' or 'pyav', got {preferred!r}")
    if preferred in ("auto", "decord") and _DECORD:
        return "decord"
    if preferred == "decord":
        raise ModuleNotFoundError(f"video backend 'decord' asked for but {_DECORD}")
    if _AV:
        return "pyav"
    raise ModuleNotFoundError(
        f"Decoding mp4 needs decord or PyAV: `pip install 'perceiver-lit[media]'` (decord: {_DECORD}; av: {_AV})"
    )


def frame_indices(
    num_total: int, num_frames: int, stride: int, train: bool, rng: random.Random | None = None
) -> np.ndarray:
    """Indices of `num_frames` frames `stride` apart: a random start in train, centered in eval.

    A video shorter than the span `(num_frames - 1) * stride + 1` starts at 0 and repeats its last frame.
    """
    if num_total <= 0:
        raise ValueError("video has no frames")
    span = (num_frames - 1) * stride + 1
    if num_total <= span:
        start = 0
    elif train:
        start = (rng or random).randint(0, num_total - span)
    else:
        start = (num_total - span) // 2
    return np.minimum(start + np.arange(num_frames) * stride, num_total - 1)


@dataclass
class Clip:
    """A decoded clip: `frames uint8 (T, H, W, C)`, their frame indices, the video's frame rate, and the
    presentation time (seconds) of the first frame, for aligning audio with it."""

    frames: np.ndarray
    indices: np.ndarray
    fps: float
    start_time: float


def decode_clip(
    data: bytes,
    num_frames: int,
    stride: int,
    train: bool,
    rng: random.Random | None = None,
    backend: str = "auto",
) -> Clip:
    """Decode `num_frames` frames of mp4 `data` at `stride` (see `frame_indices`).

    Raises on undecodable bytes; the data module turns that into a counted skip. decord 0.6 rejects some frame
    widths (e.g. 16 or 48 pixels: "DECORDArrayCopyFromTo: The size must exactly match"), so a decord failure is
    retried with PyAV when it is installed.
    """
    backend = video_backend(backend)
    if backend == "decord":
        try:
            return _decode_decord(data, num_frames, stride, train, rng)
        except Exception:  # noqa: BLE001 - retried below; PyAV's error is the one reported if both fail
            if not _AV:
                raise
    return _decode_pyav(data, num_frames, stride, train, rng)


def _decode_decord(data: bytes, num_frames: int, stride: int, train: bool, rng: random.Random | None) -> Clip:
    import decord

    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    idx = frame_indices(len(reader), num_frames, stride, train, rng)
    frames = reader.get_batch(list(idx)).asnumpy()
    start = float(reader.get_frame_timestamp(int(idx[0]))[0])
    return Clip(frames, idx, float(reader.get_avg_fps()), start)


def _decode_pyav(data: bytes, num_frames: int, stride: int, train: bool, rng: random.Random | None) -> Clip:
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        total = stream.frames  # 0 when the container does not say; then decode everything
        if total > 0:
            idx = frame_indices(total, num_frames, stride, train, rng)
            wanted, frames, times = set(idx.tolist()), {}, {}
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames[i], times[i] = frame.to_ndarray(format="rgb24"), frame.time
                if i >= idx[-1]:
                    break
            if not frames:
                raise ValueError("no frame decoded")
            idx = np.array([min(i, max(frames)) for i in idx])  # the header over-counted: repeat the last
            return Clip(np.stack([frames[i] for i in idx]), idx, fps, float(times[idx[0]] or 0.0))
        decoded = [(frame.to_ndarray(format="rgb24"), frame.time) for frame in container.decode(stream)]
    if not decoded:
        raise ValueError("no frame decoded")
    idx = frame_indices(len(decoded), num_frames, stride, train, rng)
    return Clip(np.stack([decoded[i][0] for i in idx]), idx, fps, float(decoded[idx[0]][1] or 0.0))


def decode_mp4_audio(data: bytes) -> tuple[np.ndarray, int, float]:
    """The first audio stream of an mp4: mono `float32 (S,)`, its sample rate, and the presentation time
    (seconds) of its first sample (PyAV)."""
    if not _AV:
        raise ModuleNotFoundError(f"Decoding audio inside mp4 needs PyAV: {_AV}")
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.audio:
            raise ValueError("mp4 has no audio stream")
        stream = container.streams.audio[0]
        chunks, start = [], None
        for frame in container.decode(stream):
            if start is None:
                start = float(frame.time or 0.0)
            array = frame.to_ndarray()  # planar: (channels, n); packed: (1, n * channels)
            if np.issubdtype(array.dtype, np.integer):  # s16/s32 streams; aac decodes to float already
                array = array.astype(np.float32) / float(np.iinfo(array.dtype).max + 1)
            channels = len(frame.layout.channels)
            array = array if frame.format.is_planar else array.reshape(-1, channels).T
            chunks.append(array.mean(axis=0))  # (n,) mono
        sample_rate = stream.rate
    if not chunks:
        raise ValueError("mp4 audio stream has no samples")
    wave = np.concatenate(chunks)
    return wave.astype(np.float32), int(sample_rate), float(start or 0.0)


def resize_crop(
    frames: Frames, crop_size: CropSize, short_side: int | None, train: bool, rng: random.Random | None = None
) -> torch.Tensor:
    """`uint8 (T, H, W, C)` -> `uint8 (T, h, w, C)`: resize the short side, then crop (random in train, center in
    eval). The same crop for every frame keeps the motion intact.

    Resizing stays in uint8: torch's antialiased bilinear has a vectorised uint8 channels-last kernel, about 20x
    faster than the float one.
    """
    x = torch.as_tensor(frames)
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    x = x.permute(0, 3, 1, 2)  # (T, C, H, W) view, channels-last in memory
    h, w = x.shape[-2:]
    if short_side and min(h, w) != short_side:
        scale = short_side / min(h, w)
        size = (max(crop_h, round(h * scale)), max(crop_w, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    h, w = x.shape[-2:]
    if h < crop_h or w < crop_w:  # too small for the crop even without resizing: stretch up to it
        x = F.interpolate(x, size=(max(h, crop_h), max(w, crop_w)), mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
    if train:
        top = (rng or random).randint(0, h - crop_h)
        left = (rng or random).randint(0, w - crop_w)
    else:
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return x[..., top : top + crop_h, left : left + crop_w].permute(0, 2, 3, 1).contiguous()  # (T, h, w, C)


def normalize(
    x: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`uint8 (..., W, C)` pixels -> `float32 (..., W, C)`: (x / 255 - mean) / std, into `out` when given.

    `out` (float32, x's shape, contiguous) lets a collate write each clip straight into its row of the batch:
    converting, scaling and batching become one pass over the pixels instead of stack + convert + two passes
    over a batch that is far larger than the cache. The work runs in chunks of about 512 KB, so the add reads
    what the multiply has just written while it is still in cache. Per-channel vectors are tiled to the row
    length: broadcasting a size-3 innermost dim is several times slower.
    """
    if out is None:
        out = torch.empty(x.shape, dtype=torch.float32)
    elif out.shape != x.shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(
            f"normalize: out must be contiguous float32 of shape {tuple(x.shape)}, got {out.dtype} {tuple(out.shape)}"
        )
    if x.numel() == 0:
        return out
    row = x.shape[-2] * x.shape[-1]
    scale, shift = _affine(tuple(mean), tuple(std), x.shape[-2])
    src, dst = x.reshape(-1, row), out.view(-1, row)
    step = max(1, (1 << 17) // row)  # rows per chunk: 128 K values = 512 KB of float32
    for i in range(0, src.shape[0], step):
        chunk = dst[i : i + step]
        torch.mul(src[i : i + step], scale, out=chunk)  # uint8 * float32 -> float32, no separate convert
        chunk.add_(shift)
    return out


@lru_cache(maxsize=8)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel scale 1 / (255 std) and shift -mean / std, tiled to a row of `width` pixels."""
    std_t, mean_t = torch.tensor(std, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32)
    return (1.0 / (255.0 * std_t)).repeat(width), (-mean_t / std_t).repeat(width)


def resize_crop_normalize(
    frames: Frames,
    crop_size: CropSize,
    short_side: int | None,
    train: bool,
    rng: random.Random | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> torch.Tensor:
    """`uint8 (T, H, W, C)` -> `float32 (T, h, w, C)`: `resize_crop`, then `normalize`."""
    return normalize(resize_crop(frames, crop_size, short_side, train, rng), mean, std)
