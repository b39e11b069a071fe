"""A Lightning fit on Fashion-MNIST shards plus a shard of corrupt samples, with DataLoader workers: training
goes on, and the corrupt count from the worker processes reaches the logger through LogCorruptSamples."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch

from datamodules.image import FashionMNISTDataModule
from perceiver_lit.callbacks import LogCorruptSamples
from tests.fixtures.data import write_tar

pytestmark = pytest.mark.integration


class Linear(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(28 * 28, 10)

    def training_step(self, batch, _):
        assert batch["inputs"].shape[1:] == (28, 28, 1)
        return torch.nn.functional.cross_entropy(self.net(batch["inputs"].flatten(1)), batch["target"])

    def validation_step(self, batch, _):
        loss = torch.nn.functional.cross_entropy(self.net(batch["inputs"].flatten(1)), batch["target"])
        self.log("val/loss", loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_fit_with_corrupt_shard_and_workers(fashion_shards, tmp_path):
    bad = write_tar(
        str(tmp_path / "bad-0.tar"),
        [{"__key__": f"bad{i}", "png": b"\x89PNG\r\n\x1a\n broken", "cls": "1"} for i in range(20)],
    )
    train = [os.path.join(fashion_shards.root, f"train-{i:06d}.tar") for i in range(4)] + [bad]
    dm = FashionMNISTDataModule(
        train_urls=train,
        val_urls=fashion_shards.test_urls,
        batch_size=32,
        num_workers=2,
        samples_per_epoch=640,
        shuffle_buffer=64,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[LogCorruptSamples()],
    )
    model = Linear()
    before = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    initial = before.validate(model, datamodule=dm, verbose=False)[0]["val/loss"]
    trainer.fit(model, datamodule=dm)
    assert trainer.num_training_batches == 640 // 32 and trainer.global_step == 20
    assert dm.corrupt_samples > 0  # counted inside the worker processes, read here
    assert trainer.callback_metrics["data/corrupt_samples"].item() == dm.corrupt_samples
    # it learned from the good samples: chance is ln(10) = 2.303; measured 2.67 untrained -> 0.90 after 20 steps
    assert trainer.callback_metrics["val/loss"].item() < min(0.5 * initial, 1.5)
