"""Image transforms and the image round trip: files/IDX -> shards -> DataModule -> batch."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.errors import DataError
from datamodules.image import FashionMNISTDataModule, ImageDataModule
from datamodules.shards.fashion_mnist import DEFAULT_DIR, load_split
from datamodules.transforms import image as T


def test_inception_crop_size_and_area_range():
    img = Image.new("RGB", (400, 300))
    rng = random.Random(0)
    for _ in range(20):
        assert T.inception_crop(img, 64, rng).size == (64, 64)
    # a tall thin image forces the fallback path and still gives the size
    assert T.inception_crop(Image.new("RGB", (10, 1000)), 32, rng).size == (32, 32)


def test_center_crop_takes_the_middle():
    arr = np.zeros((256, 320, 3), np.uint8)
    arr[128 - 50 : 128 + 50, 160 - 50 : 160 + 50] = 255  # a white square in the middle
    out = np.asarray(T.center_crop(Image.fromarray(arr), 224, 224 / 256))
    assert out.shape == (224, 224, 3)
    assert out[112, 112].min() == 255 and out[0, 0].max() == 0  # centred: middle white, corner black


def test_to_tensor_normalises_channels_last():
    img = Image.fromarray(np.full((5, 6, 3), 255, np.uint8))
    x = T.to_tensor(img, T.IMAGENET_MEAN, T.IMAGENET_STD)
    assert x.shape == (5, 6, 3) and x.dtype == torch.float32
    expected = torch.tensor([(1 - m) / s for m, s in zip(T.IMAGENET_MEAN, T.IMAGENET_STD)])
    assert torch.allclose(x[0, 0], expected, atol=1e-5)


def test_rand_augment_changes_image_keeps_size():
    arr = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    rng = random.Random(1)
    outs = [T.rand_augment(img, 4, 5, rng) for _ in range(5)]
    assert all(o.size == (32, 32) and o.mode == "RGB" for o in outs)
    assert any(not np.array_equal(np.asarray(o), arr) for o in outs)
    assert T.rand_augment(img.convert("L"), 2, 9, rng).mode == "L"


def test_fashion_round_trip_matches_idx(fashion_shards):
    assert fashion_shards.num_train == 400 and fashion_shards.num_test == 400
    dm = FashionMNISTDataModule(val_urls=fashion_shards.test_urls, batch_size=100, num_workers=0)
    assert dm.input_shape == (28, 28, 1) and dm.num_classes == 10
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    inputs = torch.cat([b["inputs"] for b in batches])
    target = torch.cat([b["target"] for b in batches])
    keys = [k for b in batches for k in b["key"]]
    assert inputs.shape == (400, 28, 28, 1) and inputs.dtype == torch.float32 and target.dtype == torch.int64
    images, labels = load_split(DEFAULT_DIR, "test", 400)
    idx = int(keys[0].split("_")[1])  # writer keys are <prefix>_<source index>
    raw = (inputs[0, ..., 0] * T.FASHION_MNIST_STD[0] + T.FASHION_MNIST_MEAN[0]) * 255
    assert torch.allclose(raw, torch.tensor(images[idx]).float(), atol=1e-3)
    assert target[0].item() == labels[idx]
    assert abs(inputs.mean().item()) < 0.2 and abs(inputs.std().item() - 1) < 0.2  # normalised


def test_jpeg_round_trip_train_and_eval(jpeg_shards):
    dm = ImageDataModule(
        train_urls=jpeg_shards.train_urls,
        val_urls=jpeg_shards.test_urls,
        image_size=32,
        num_classes=3,
        batch_size=8,
        num_workers=0,
        randaugment_layers=2,
        randaugment_magnitude=5,
    )
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["inputs"].shape == (8, 32, 32, 3) and train["target"].max() < 3
    val = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in val) == jpeg_shards.num_test == 48
    assert val[0]["inputs"].shape[1:] == (32, 32, 3) and dm.corrupt_samples == 0


def test_crop_false_requires_the_size(fashion_shards):
    dm = FashionMNISTDataModule(val_urls=fashion_shards.test_urls, image_size=32, batch_size=400, num_workers=0)
    dm.setup("validate")
    with pytest.raises(DataError, match=r"every one of the 400 samples in .*test-000000.tar' and 3 more shards"):
        list(dm.val_dataloader())  # an evaluation that measured nothing is an error, not an empty result
    assert dm.corrupt_samples == 400  # every sample was counted (and its warning names the size mismatch)


def test_bad_channel_config_is_rejected():
    with pytest.raises(ValueError, match="mean/std need 3 values"):
        ImageDataModule(mean=(0.5,), std=(0.5,))
