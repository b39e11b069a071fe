"""The shipped DDP data path, end to end: `perceiver-lit fit --config configs/local/image.yaml --config
configs/trainer/ddp.yaml` with 2 gloo ranks on CPU, StreamingDataModule splitting the training stream as
docs/data.md promises: every rank and DataLoader worker draws its own stream (seeded by seed, epoch, rank, worker),
the ranks never train on the same batch, and a run resumed with `--ckpt_path last` continues the sequence an
uninterrupted run would have drawn. A small callback in this file records every training batch's sample keys."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

from tests.fixtures.training import write_config

pytestmark = [pytest.mark.integration, pytest.mark.ddp]

ROOT = Path(__file__).resolve().parents[2]
CONFIG, DDP = ROOT / "configs" / "local" / "image.yaml", ROOT / "configs" / "trainer" / "ddp.yaml"
WORLD, WORKERS, BATCH = 2, 2, 4
STEPS = 8  # per rank and epoch: samples_per_epoch = WORLD * STEPS * BATCH; 4 batches per worker


class KeyRecorder(pl.Callback):
    """Appends {"epoch", "batch", "keys"} of every training batch to `<path>-rank<r>.jsonl`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(f"{self.path}-rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "batch": batch_idx, "keys": list(batch["key"])}) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit(tmp_path: Path, shards, name: str, max_epochs: int, *extra: str) -> dict[int, list[dict]]:
    """Run the console script like a user on one node; return each rank's recorded batches."""
    from tests.integration.test_configs import shrink

    net = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["net"]
    run = tmp_path / name
    override = {
        # ddp.yaml is for GPUs: only the accelerator is changed (gloo is then picked by process_group_backend:
        # null), and devices, which ddp.yaml leaves to `auto` (= all GPUs; train.sbatch sets it under Slurm).
        # Its bf16-mixed, static_graph and gradient_as_bucket_view stay.
        "trainer": {
            "accelerator": "cpu",
            "devices": WORLD,
            "max_epochs": max_epochs,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run),
            "callbacks": [
                {"class_path": f"{__name__}.KeyRecorder", "init_args": {"path": str(tmp_path / f"{name}-keys")}}
            ],
        },
        "model": {"init_args": {"net": shrink(net)}},
        # 2 workers (the config ships 1) so that each rank has several worker streams to tell apart; mix_batches
        # stays 1 as shipped, so batch i of an epoch comes from worker i % 2 (the DataLoader's round robin)
        "data": {
            "init_args": {
                "train_urls": shards.train_urls,
                "val_urls": shards.test_urls,
                "test_urls": shards.test_urls,
                "batch_size": BATCH,
                "num_workers": WORKERS,
                "samples_per_epoch": WORLD * STEPS * BATCH,
                "shuffle_buffer": 16,
            }
        },
    }
    cfg = write_config(tmp_path, override, f"{name}.yaml")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WANDB_MODE": "offline",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    for key in [k for k in env if k.startswith("SLURM_")]:  # a plain node, not a Slurm step
        del env[key]
    cmd = [
        str(Path(sys.executable).parent / "perceiver-lit"),
        "fit",
        "--config",
        str(CONFIG),
        "--config",
        str(DDP),
        "--config",
        cfg,
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    saved = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert saved["precision"] == "bf16-mixed" and saved["strategy"]["init_args"]["gradient_as_bucket_view"]
    out = {}
    for rank in range(WORLD):
        lines = (tmp_path / f"{name}-keys-rank{rank}.jsonl").read_text().splitlines()
        out[rank] = [json.loads(line) for line in lines]
    return out


def by_epoch(batches: list[dict], epoch: int) -> list[list[str]]:
    return [b["keys"] for b in batches if b["epoch"] == epoch]


def test_ranks_and_workers_draw_their_own_streams_and_a_resume_continues_them(fashion_shards, tmp_path):
    full = fit(tmp_path, fashion_shards, "full", 2)
    for rank in range(WORLD):
        assert [(b["epoch"], b["batch"]) for b in full[rank]] == [(e, i) for e in range(2) for i in range(STEPS)]
        assert all(len(b["keys"]) == BATCH for b in full[rank])
    for epoch in range(2):
        streams = {
            (rank, worker): [
                k for i, keys in enumerate(by_epoch(full[rank], epoch)) if i % WORKERS == worker for k in keys
            ]
            for rank in range(WORLD)
            for worker in range(WORKERS)
        }
        # every (rank, worker) stream is its own: no two are the same sequence, or a shifted copy's prefix
        for a in streams:
            for b in streams:
                if a < b:
                    assert streams[a] != streams[b], (epoch, a, b)
                    assert streams[a][:BATCH] != streams[b][:BATCH], (epoch, a, b)
        # the ranks never train on the same batch at a step
        assert all(set(k0) != set(k1) for k0, k1 in zip(by_epoch(full[0], epoch), by_epoch(full[1], epoch)))
    # a new epoch draws anew
    for rank in range(WORLD):
        assert by_epoch(full[rank], 0) != by_epoch(full[rank], 1)

    # interrupted after epoch 0, resumed from last.ckpt: the same epoch 0, then epoch 1 as the uninterrupted run
    first = fit(tmp_path, fashion_shards, "part", 1)
    for rank in range(WORLD):
        assert by_epoch(first[rank], 0) == by_epoch(full[rank], 0)
    (tmp_path / "part-keys-rank0.jsonl").unlink()
    (tmp_path / "part-keys-rank1.jsonl").unlink()
    resumed = fit(tmp_path, fashion_shards, "part", 2, "--ckpt_path", "last")
    for rank in range(WORLD):
        assert [b["epoch"] for b in resumed[rank]] == [1] * STEPS
        assert by_epoch(resumed[rank], 1) == by_epoch(full[rank], 1), rank
