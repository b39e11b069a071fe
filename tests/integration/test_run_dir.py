"""The run directory as the CLI leaves it: one run's outputs only, under fixed names, one live fit at a time.

Each case drives `perceiver-lit fit/test` as a user runs it (in-process, or as a subprocess where the exit status
and the one-line message matter).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures.training import fashion_data, run_cli, tiny_perceiver, write_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _config(shards, name: str = "run", epochs: int = 1, **model_args) -> dict:
    model = tiny_perceiver()
    model["init_args"].update(model_args)
    return {
        "name": name,
        "trainer": {"accelerator": "cpu", "max_epochs": epochs, "limit_val_batches": 1, "num_sanity_val_steps": 0,
                    "logger": False, "enable_progress_bar": False, "enable_model_summary": False},
        "model": model,
        "data": fashion_data(shards, batch_size=50, samples_per_epoch=100),  # 2 steps per epoch
    }


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_second_fit_into_a_used_run_dir_replaces_best_and_last(fashion_shards, tmp_path):
    """issue 20.1: LightningCLI passes enable_version_counter=True; the names must still never change."""
    cfg = write_config(tmp_path, _config(fashion_shards, epochs=2))
    run_cli(["fit", "--config", cfg], cwd=tmp_path)
    ckpts = tmp_path / "runs" / "run" / "checkpoints"
    assert _load(ckpts / "best.ckpt")["global_step"] in (2, 4) and _load(ckpts / "last.ckpt")["global_step"] == 4

    run_cli(["fit", "--config", cfg, "--trainer.max_epochs", "1"], cwd=tmp_path)
    assert sorted(os.listdir(ckpts)) == ["best.ckpt", "last.ckpt"]  # no best-v1.ckpt / last-v1.ckpt
    assert _load(ckpts / "best.ckpt")["global_step"] == 2 and _load(ckpts / "last.ckpt")["global_step"] == 2
