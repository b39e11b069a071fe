"""Images (jpg/png/webp, or uint8 npy) -> float32 (B, H, W, C), normalised, channels-last."""

from __future__ import annotations

from typing import Any

import torch

from datamodules.streaming import StreamingDataModule
from datamodules.transforms import image as T


class ImageDataModule(StreamingDataModule):
    """ImageNet-style images. Train: Inception crop + flip (+ RandAugment); eval: center crop; then normalise.

    Args (plus StreamingDataModule's):
        image_size: output height = width.
        crop: False -> no crop or resize, just to-tensor + normalise (images must already be image_size square,
            e.g. raw 28x28 Fashion-MNIST); True -> Inception crop in training, center crop in eval.
        crop_ratio: eval center crop takes image_size / crop_ratio on the shorter side (224 / (224 + 32)).
        scale, ratio: Inception crop area fraction and aspect range.
        hflip: random horizontal flip in training.
        randaugment_layers, randaugment_magnitude: RandAugment N and M (0 layers: off; the paper: 4, 5).
        channels: 3 (RGB) or 1 (grayscale).
        mean, std: per-channel normalisation (default ImageNet's; one value per channel).
    """

    input_exts = T.IMAGE_EXTS

    def __init__(
        self,
        image_size: int = 224,
        crop: bool = True,
        crop_ratio: float = 224 / 256,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        randaugment_layers: int = 0,
        randaugment_magnitude: float = 9.0,
        channels: int = 3,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        num_classes: int = 1000,
        **kwargs: Any,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.image_size, self.crop, self.crop_ratio = image_size, crop, crop_ratio
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        self.randaugment_layers, self.randaugment_magnitude = randaugment_layers, randaugment_magnitude
        self.channels, self.mode = channels, "RGB" if channels == 3 else "L"
        default_mean, default_std = (
            (T.IMAGENET_MEAN, T.IMAGENET_STD) if channels == 3 else (T.FASHION_MNIST_MEAN, T.FASHION_MNIST_STD)
        )
        self.mean = tuple(mean) if mean is not None else default_mean
        self.std = tuple(std) if std is not None else default_std
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {self.mean} / {self.std}")
        self.input_shape = (image_size, image_size, channels)

    def decode_inputs(self, sample: dict[str, Any], train: bool) -> torch.Tensor:
        ext = self.find_ext(sample)
        augment = train and (self.hflip or self.randaugment_layers > 0)
        if ext == "npy" and not self.crop and not augment:  # nothing for PIL to do: stay in numpy
            arr = T.decode_npy_image(sample[ext])
            if arr.shape == self.input_shape:
                return torch.from_numpy(arr)  # uint8 (H, W, C); collate normalises into the float batch
        img = T.decode_image(sample[ext], ext, self.mode)
        if self.crop:
            if train:
                img = T.inception_crop(img, self.image_size, self.rng, self.scale, self.ratio)
            else:
                img = T.center_crop(img, self.image_size, self.crop_ratio)
        elif img.size != (self.image_size, self.image_size):
            raise ValueError(
                f"image is {img.size[0]}x{img.size[1]}, crop=False needs {self.image_size}x{self.image_size}"
            )
        if train and self.hflip:
            img = T.hflip(img, self.rng)
        if train and self.randaugment_layers > 0:
            img = T.rand_augment(img, self.randaugment_layers, self.randaugment_magnitude, self.rng)
        return T.to_uint8(img)  # uint8 (H, W, C); collate normalises into the float batch

    def collate_inputs(self, images: list[torch.Tensor]) -> torch.Tensor:
        return T.normalize_into(images, self.mean, self.std)  # float32 (B, H, W, C)


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST shards from `perceiver-lit-shards fashion-mnist`: raw 28x28 grayscale, 10 classes."""

    def __init__(
        self,
        image_size: int = 28,
        crop: bool = False,
        channels: int = 1,
        hflip: bool = False,
        num_classes: int = 10,
        **kwargs: Any,
    ):
        super().__init__(
            image_size=image_size, crop=crop, channels=channels, hflip=hflip, num_classes=num_classes, **kwargs
        )
