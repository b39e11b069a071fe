"""W&B dashboards offline: a real tiny fit + test with WandbLogger(offline=True), then the offline run directory
is read back: the attention-map images, the per-class table, grad norm, and the logged hyperparameters."""

import glob
import json
import os
import time

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image

from datamodules.image import FashionMNISTDataModule
from perceiver_lit.callbacks.attention_maps import (
    AttentionMaps,
    cross_attention_weights,
    element_permutation,
    first_cross_attention,
)
from perceiver_lit.callbacks.grad_norm import GradNorm
from perceiver_lit.callbacks.tables import PerClassTable, RunConfig
from perceiver_lit.models import ImageAdapter, Perceiver
from perceiver_lit.tasks import Classification
from tests.fixtures.training import read_wandb_records

pytestmark = pytest.mark.integration


def finished_records(run_dir: str, timeout: float = 20.0) -> list:
    """The records of a finished offline run. wandb-core may still be writing the file's tail (config, summary,
    exit) for a moment after `finish()` returns, so wait for its `exit` record."""
    (file,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    deadline = time.monotonic() + timeout
    while True:
        records = read_wandb_records(file)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_config(run_dir: str) -> dict:
    """The run config of an offline run, as the last config record holds it (values JSON-decoded)."""
    cfg: dict = {}
    for r in finished_records(run_dir):
        if r.WhichOneof("record_type") == "config":
            cfg.update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.config.update})
    return cfg


def wandb_history(run_dir: str) -> list[dict]:
    """Every `wandb.log` row of an offline run, {key: value} with nested keys joined by '/'."""
    rows = []
    for r in finished_records(run_dir):
        if r.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


def tiny_perceiver(permute_seed=None, num_classes=10):
    adapter = ImageAdapter((28, 28, 1), num_frequency_bands=4, permute_seed=permute_seed)
    return Perceiver(
        adapter,
        num_classes=num_classes,
        num_latents=8,
        latent_dim=16,
        num_cross_attends=1,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
    )


def test_recomputed_weights_match_sdpa_output():
    # The recomputed softmax(q k^T) must be the weights SDPA used: their product with v reproduces the attention.
    torch.manual_seed(0)
    net = tiny_perceiver().eval()
    layer = first_cross_attention(net)
    x, _ = net.adapter(torch.randn(2, 28, 28, 1))
    z = net.latents.expand(2, -1, -1)
    w = cross_attention_weights(layer, z, x)  # (2, 8, 784)
    assert w.shape == (2, 8, 784) and torch.allclose(w.sum(-1), torch.ones(2, 8), atol=1e-5)
    v = layer.to_kv(layer.norm_kv(x))[..., layer.qk_channels :]
    q = layer.to_q(layer.norm_q(z))
    k = layer.to_kv(layer.norm_kv(x))[..., : layer.qk_channels]
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(w @ v, sdpa, atol=1e-5)


def test_weights_under_bf16_autocast_are_the_fp32_weights():
    """Under bf16-mixed (every paper recipe) the maps are computed in fp32: the same weights as without autocast,
    and a dtype matplotlib can draw (bf16 scores crashed the first validation of every bf16 run)."""
    torch.manual_seed(0)
    net = tiny_perceiver().eval()
    layer = first_cross_attention(net)
    x, _ = net.adapter(torch.randn(2, 28, 28, 1))
    z = net.latents.expand(2, -1, -1)
    fp32 = cross_attention_weights(layer, z, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = cross_attention_weights(layer, z, x)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, fp32, rtol=0, atol=0)


def test_permutation_is_the_adapters():
    from datamodules.transforms.permute import permutation

    net = tiny_perceiver(permute_seed=3)
    assert torch.equal(element_permutation(net, 784), permutation(784, 3))
    assert element_permutation(tiny_perceiver(), 784) is None


def test_wandb_offline_run_has_attention_maps_and_tables(fashion_shards, tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    pl.seed_everything(0)
    dm = FashionMNISTDataModule(
        train_urls=fashion_shards.train_urls,
        val_urls=fashion_shards.test_urls,
        test_urls=fashion_shards.test_urls,
        batch_size=50,
        num_workers=0,
    )
    task = Classification(tiny_perceiver(), num_classes=10, lr=1e-3, schedule="constant")
    # What perceiver-lit's SaveRunConfig leaves in the run directory; RunConfig puts it into the W&B config.
    (tmp_path / "config.yaml").write_text(
        "data:\n  class_path: datamodules.image.FashionMNISTDataModule\n"
        "  init_args: {batch_size: 50, permute_seed: null}\n"
        "trainer: {max_epochs: 1, gradient_clip_val: 1.0}\n"
    )
    logger = WandbLogger(project="perceiver-lit-test", save_dir=str(tmp_path), offline=True)
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        limit_test_batches=4,
        log_every_n_steps=1,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[AttentionMaps(num_latents=3, num_samples=2), PerClassTable(), GradNorm(), RunConfig()],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(task, dm)
    trainer.test(task, dm)
    run_dir = logger.experiment.dir  # .../wandb/offline-run-*/files
    logger.experiment.finish()

    images = sorted(glob.glob(os.path.join(run_dir, "media", "images", "val", "attention_maps_*.png")))
    assert len(images) == 2  # two samples, one validation epoch
    with Image.open(images[0]) as im:
        assert im.width > 3 * im.height > 0  # input + 3 latent maps side by side
        assert len(set(im.convert("L").getdata())) > 20  # a drawn figure, not a blank canvas

    tables = glob.glob(os.path.join(run_dir, "media", "table", "test", "per_class_accuracy_*.table.json"))
    assert len(tables) == 1
    table = json.load(open(tables[0]))
    assert table["columns"] == ["class", "name", "accuracy", "support"]
    assert [r[0] for r in table["data"]] == list(range(10))
    assert sum(r[3] for r in table["data"]) == 200  # 4 test batches of 50
    # a class without test samples has no accuracy; every other one has one in [0, 1]
    assert all((r[2] is None) == (r[3] == 0) and (r[2] is None or 0.0 <= r[2] <= 1.0) for r in table["data"])
    # names end to end: the writer's classes.json -> the data module -> the table
    from datamodules.shards.fashion_mnist import CLASS_NAMES

    assert dm.class_names == list(CLASS_NAMES) and [r[1] for r in table["data"]] == list(CLASS_NAMES)
    (confusion,) = glob.glob(os.path.join(run_dir, "media", "table", "test", "confusion_matrix*.table.json"))
    confusion = json.load(open(confusion))
    assert confusion["columns"] == ["Actual", "Predicted", "nPredictions"]
    assert {r[0] for r in confusion["data"]} == set(CLASS_NAMES) and sum(r[2] for r in confusion["data"]) == 200

    cfg = wandb_config(os.path.dirname(run_dir))
    assert "data" in cfg, f"RunConfig's keys are missing from the run config: {sorted(cfg)}"
    assert cfg["data"]["init_args"] == {"batch_size": 50, "permute_seed": None}  # filterable by any key
    assert cfg["trainer"]["max_epochs"] == 1 and cfg["lr"] == 1e-3  # the task's own hyperparameters stay
    rows = wandb_history(os.path.dirname(run_dir))
    logged = {k for r in rows for k in r}
    assert {"train/loss_step", "val/acc1", "test/acc1", "test/acc5"} <= logged
    grad_norms = [r["train/grad_norm"] for r in rows if "train/grad_norm" in r]
    assert len(grad_norms) == 3 and all(g > 0 for g in grad_norms)  # one per step (log_every_n_steps=1)
    assert [r["model/params"] for r in rows if "model/params" in r] == [sum(p.numel() for p in task.net.parameters())]
    (maps,) = [r for r in rows if "val/attention_maps/_type" in r]
    assert maps["val/attention_maps/_type"] == "images/separated" and maps["val/attention_maps/count"] == 2
    (tab,) = [r for r in rows if "test/per_class_accuracy/_type" in r]
    assert tab["test/per_class_accuracy/_type"] == "table-file" and tab["test/per_class_accuracy/nrows"] == 10


def test_callbacks_are_noops_without_wandb(fashion_shards, tmp_path, caplog):
    dm = FashionMNISTDataModule(
        train_urls=fashion_shards.train_urls,
        val_urls=fashion_shards.test_urls,
        test_urls=fashion_shards.test_urls,
        batch_size=50,
        num_workers=0,
    )
    task = Classification(tiny_perceiver(), num_classes=10, schedule="constant")
    cbs = [AttentionMaps(), PerClassTable(), RunConfig()]
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        limit_test_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=cbs,
        default_root_dir=str(tmp_path),
    )
    with caplog.at_level("INFO"):
        trainer.fit(task, dm)
        trainer.test(task, dm)
    assert "AttentionMaps: no WandbLogger attached" in caplog.text
    assert "PerClassTable: no WandbLogger attached" in caplog.text
    assert "RunConfig: no WandbLogger attached" in caplog.text
    assert cbs[0]._handle is None and cbs[1]._handle is None
