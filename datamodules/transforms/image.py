"""Image transforms in PIL/numpy/torch: safe decode, Inception crop, center crop, flip, RandAugment, normalise.

All randomness comes from an explicit `random.Random` (the data module seeds one per rank, worker and epoch).
Output of `to_tensor`: float32 (H, W, C), channels-last, normalised.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from datamodules.transforms.npy import decode_npy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "npy")


def decode_npy_image(data: bytes) -> np.ndarray:
    """uint8 npy bytes (H, W[, C]) -> uint8 (H, W, C) array (never unpickles)."""
    arr = decode_npy(data)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3):
        raise ValueError(f"npy image must be uint8 (H, W[, C]), got {arr.dtype} {arr.shape}")
    return arr[..., None] if arr.ndim == 2 else arr


def decode_image(data: bytes, ext: str, mode: str) -> Image.Image:
    """Decode jpg/png/webp bytes (PIL, fully loaded so truncation raises here) or a uint8 npy (H, W[, C])
    (never unpickled) into a PIL image of `mode` ("RGB" or "L")."""
    if ext == "npy":
        arr = decode_npy_image(data)
        img = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    else:
        img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS[ext])
        img.load()  # decode now: a truncated file raises OSError here, not later in a transform
    return img if img.mode == mode else img.convert(mode)


_PIL_FORMATS = {e: ["JPEG", "PNG", "WEBP"] for e in ("jpg", "jpeg", "png", "webp")}  # no exotic PIL plugins


def inception_crop(
    img: Image.Image,
    size: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """Random-area, random-aspect crop resized to size x size (Szegedy et al.); falls back to a center crop."""
    w, h = img.size
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return img.resize((size, size), Image.BILINEAR, box=(x, y, x + cw, y + ch))
    # fallback: the largest center crop within the aspect range
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif aspect > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    x, y = (w - cw) // 2, (h - ch) // 2
    return img.resize((size, size), Image.BILINEAR, box=(x, y, x + cw, y + ch))


def center_crop(img: Image.Image, size: int, crop_ratio: float = 224 / 256) -> Image.Image:
    """Resize the shorter side to size / crop_ratio, then take the central size x size (one resize, via box)."""
    w, h = img.size
    short = min(w, h)
    crop = short * crop_ratio  # the source square that maps onto size x size
    x, y = (w - crop) / 2, (h - crop) / 2
    return img.resize((size, size), Image.BILINEAR, box=(x, y, x + crop, y + crop))


def hflip(img: Image.Image, rng: random.Random) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def to_uint8(img: Image.Image) -> torch.Tensor:
    """PIL -> uint8 (H, W, C) (one copy)."""
    x = torch.from_numpy(np.array(img, dtype=np.uint8))
    return x.unsqueeze(-1) if x.ndim == 2 else x


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (..., C) -> float32 (..., C), (x / 255 - mean) / std. Run on a whole batch: one vectorised pass."""
    scale = torch.tensor([1 / (255 * s) for s in std])
    shift = torch.tensor([m / s for m, s in zip(mean, std)])
    return x.float().mul_(scale).sub_(shift)


def normalize_into(samples: list[torch.Tensor], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Stack uint8 (H, W, C) samples into a new float32 (B, H, W, C) batch, normalising each sample while it is
    in cache (one write per element: cheaper than stack-then-normalise over the whole batch)."""
    scale = torch.tensor([1 / (255 * s) for s in std])
    shift = torch.tensor([m / s for m, s in zip(mean, std)])
    from datamodules.buffers import batch_buffer  # shared memory in a worker: no copy on the way to the trainer

    out = batch_buffer((len(samples), *samples[0].shape), torch.float32)
    neg_shift = -shift
    for i, x in enumerate(samples):
        torch.addcmul(neg_shift, x.float(), scale, out=out[i])  # one fused pass writes the batch row
    return out


def to_tensor(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """PIL -> float32 (H, W, C), (x / 255 - mean) / std."""
    return normalize(to_uint8(img), mean, std)


# ----------------------------------------------------------------------------------------------- RandAugment
def _level(m: float, maxval: float) -> float:
    return m / 10.0 * maxval  # magnitude M in [0, 10] (timm/paper scale)


def _signed(v: float, rng: random.Random) -> float:
    return -v if rng.random() < 0.5 else v


def _fill(img: Image.Image) -> tuple[int, ...] | int:
    return (128,) * len(img.getbands()) if len(img.getbands()) > 1 else 128


_OPS = {
    "Identity": lambda img, m, r: img,
    "AutoContrast": lambda img, m, r: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, r: ImageOps.equalize(img),
    "Rotate": lambda img, m, r: img.rotate(_signed(_level(m, 30), r), fillcolor=_fill(img)),
    "Solarize": lambda img, m, r: ImageOps.solarize(img, 256 - int(_level(m, 256))),
    "Posterize": lambda img, m, r: ImageOps.posterize(img, max(1, 8 - int(_level(m, 4)))),
    "Color": lambda img, m, r: ImageEnhance.Color(img).enhance(1 + _signed(_level(m, 0.9), r)),
    "Contrast": lambda img, m, r: ImageEnhance.Contrast(img).enhance(1 + _signed(_level(m, 0.9), r)),
    "Brightness": lambda img, m, r: ImageEnhance.Brightness(img).enhance(1 + _signed(_level(m, 0.9), r)),
    "Sharpness": lambda img, m, r: ImageEnhance.Sharpness(img).enhance(1 + _signed(_level(m, 0.9), r)),
    "ShearX": lambda img, m, r: img.transform(
        img.size, Image.AFFINE, (1, _signed(_level(m, 0.3), r), 0, 0, 1, 0), fillcolor=_fill(img)
    ),
    "ShearY": lambda img, m, r: img.transform(
        img.size, Image.AFFINE, (1, 0, 0, _signed(_level(m, 0.3), r), 1, 0), fillcolor=_fill(img)
    ),
    "TranslateX": lambda img, m, r: img.transform(
        img.size, Image.AFFINE, (1, 0, _signed(_level(m, 0.45) * img.size[0], r), 0, 1, 0), fillcolor=_fill(img)
    ),
    "TranslateY": lambda img, m, r: img.transform(
        img.size, Image.AFFINE, (1, 0, 0, 0, 1, _signed(_level(m, 0.45) * img.size[1], r)), fillcolor=_fill(img)
    ),
}


def rand_augment(img: Image.Image, num_layers: int, magnitude: float, rng: random.Random) -> Image.Image:
    """RandAugment (Cubuk et al. 2020): `num_layers` ops drawn uniformly, each at `magnitude` M in [0, 10]."""
    for name in rng.choices(list(_OPS), k=num_layers):
        img = _OPS[name](img, magnitude, rng)
    return img
