"""Real 2-process gloo DDP: exact eval coverage, equal train batch counts with uneven shards, and a Lightning
ddp_spawn run whose ranks have unequal eval batch counts (no hang; torchmetrics sums exactly)."""

from __future__ import annotations

import json
import os
import socket

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchmetrics

from datamodules.image import ImageDataModule
from datamodules.shards.writer import write_shards
from tests.fixtures.data import npy_bytes

pytestmark = [pytest.mark.integration, pytest.mark.ddp]

COUNTS = [10, 10, 10, 7, 3]  # uneven shards, 40 samples


def encode_tiny(i: int) -> dict[str, bytes]:
    return {"npy": npy_bytes(np.full((4, 4), i % 256, np.uint8)), "cls": str(i % 10).encode()}


def write_uneven(root: str) -> str:
    urls = []
    for j, n in enumerate(COUNTS):  # one writer call per shard gives exactly these sizes
        s = write_shards(list(range(100 * j, 100 * j + n)), encode_tiny, root, f"s{j}", progress=False)
        urls.append(os.path.join(root, next(iter(s.shards))))
    return "::".join(urls)


def make_dm(urls: str, **kw) -> ImageDataModule:
    return ImageDataModule(
        train_urls=urls, val_urls=urls, image_size=4, crop=False, channels=1, hflip=False, num_classes=10, **kw
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tiny(L.LightningModule):
    """Counts eval samples with a torchmetrics SumMetric: synced once at epoch end, never per step."""

    def __init__(self, out: str):
        super().__init__()
        self.out = out
        self.net = torch.nn.Linear(16, 10)
        self.seen = torchmetrics.SumMetric()

    def training_step(self, batch, _):
        return torch.nn.functional.cross_entropy(self.net(batch["inputs"].flatten(1)), batch["target"])

    def validation_step(self, batch, _):
        self.seen.update(torch.tensor(float(len(batch["key"]))))
        loss = torch.nn.functional.cross_entropy(self.net(batch["inputs"].flatten(1)), batch["target"])
        # eval default on_step=False: reduced across ranks once at epoch end, so unequal step counts are fine
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch["key"]))

    def on_validation_epoch_end(self):
        total = self.seen.compute()
        self.seen.reset()
        with open(os.path.join(self.out, f"fit{self.global_rank}-{self.current_epoch}.json"), "w") as f:
            json.dump(
                {
                    "total": float(total),
                    "val_batches": self.trainer.num_val_batches[0],
                    "train_batches": self.trainer.num_training_batches,
                },
                f,
            )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _rank_main(rank: int, world: int, port: int, urls: str, out: str) -> None:
    # the env a launcher (torchrun, srun) gives each rank: Lightning then joins instead of launching
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # 1. the bare loaders
        dm = make_dm(urls, batch_size=4, num_workers=2, samples_per_epoch=50, shuffle_buffer=8)
        dm.setup("fit")
        train = [len(b["key"]) for b in dm.train_dataloader()]
        val_keys = [k for b in dm.val_dataloader() for k in b["key"]]
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"train": train, "val": val_keys, "len": len(dm.train_dataloader())}, f)
        # 2. a Lightning DDP fit whose ranks have unequal eval batch counts
        dm = make_dm(urls, batch_size=3, num_workers=1, samples_per_epoch=36, shuffle_buffer=8)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=world,
            strategy="ddp",
            max_epochs=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(Tiny(out), datamodule=dm)
        with open(os.path.join(out, f"metrics{rank}.json"), "w") as f:
            json.dump({k: float(v) for k, v in trainer.callback_metrics.items()}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> str:
    """Spawn 2 real gloo ranks once for this module's tests; each writes what it saw as JSON."""
    root = str(tmp_path_factory.mktemp("ddp"))
    urls = write_uneven(root)
    mp.spawn(_rank_main, args=(2, free_port(), urls, root), nprocs=2, join=True)
    return root


def load(root: str, name: str) -> dict:
    with open(os.path.join(root, name)) as f:
        return json.load(f)


def test_exact_eval_and_equal_train_batches(ddp_run):
    r0, r1 = load(ddp_run, "rank0.json"), load(ddp_run, "rank1.json")
    assert r0["train"] == r1["train"] == [4] * (50 // (2 * 4))  # 6 full batches on each rank
    assert r0["len"] == r1["len"] == 6
    assert len(r0["val"]) != len(r1["val"])  # uneven by construction...
    keys = r0["val"] + r1["val"]
    assert len(keys) == sum(COUNTS) and len(set(keys)) == sum(COUNTS)  # ...yet every sample exactly once


def test_lightning_ddp_uneven_eval_does_not_hang(ddp_run):
    names = ["fit0-0.json", "fit1-0.json", "fit0-1.json", "fit1-1.json"]
    results = {n: load(ddp_run, n) for n in names}
    assert all(r["total"] == sum(COUNTS) for r in results.values())  # summed over ranks: every sample once
    assert results["fit0-0.json"]["val_batches"] != results["fit1-0.json"]["val_batches"]  # uneven per rank
    assert {r["train_batches"] for r in results.values()} == {36 // (2 * 3)}
    m0, m1 = load(ddp_run, "metrics0.json"), load(ddp_run, "metrics1.json")
    assert m0["val/loss"] == pytest.approx(m1["val/loss"])  # one synced value on both ranks
