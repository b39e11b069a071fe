"""Resuming from last.ckpt continues at the saved global step, with the optimizer and scheduler state."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from tests.fixtures.training import fashion_data, run_cli, tiny_perceiver, write_config

pytestmark = pytest.mark.integration


class RecordStart(pl.Callback):
    """Remembers where training (re)started: global step, optimizer step count, scheduler step, lr."""

    def on_train_start(self, trainer, pl_module):
        opt = trainer.optimizers[0]
        steps = [float(s["step"]) for s in opt.state.values() if "step" in s]
        sched = trainer.lr_scheduler_configs[0].scheduler
        self.start = {
            "global_step": trainer.global_step,
            "opt_steps": set(steps),
            "sched": sched.last_epoch,
            "lr": opt.param_groups[0]["lr"],
        }


def test_resume_from_last_continues_optimizer_and_schedule(fashion_shards, tmp_path):
    model = tiny_perceiver()
    model["init_args"].update(optimizer="lamb", lr=0.01, schedule="step", decay_epochs=[1])
    config = {
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_progress_bar": False,
            "callbacks": [{"class_path": "tests.integration.test_resume.RecordStart"}],
        },
        "model": model,
        "data": fashion_data(fashion_shards, batch_size=50, samples_per_epoch=100),  # 2 steps per epoch
        "name": "resume",
    }
    cfg = write_config(tmp_path, config)
    first = run_cli(["fit", "--config", cfg], cwd=tmp_path)
    assert first.trainer.global_step == 2
    last = tmp_path / "runs" / "resume" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 2
    saved_lr = ckpt["optimizer_states"][0]["param_groups"][0]["lr"]
    assert saved_lr == pytest.approx(0.001)  # decayed x0.1 at epoch 1 = step 2

    # Same run directory again (the config is overwritten, not a crash), two epochs, from last.ckpt.
    second = run_cli(["fit", "--config", cfg, "--trainer.max_epochs", "2", "--ckpt_path", str(last)], cwd=tmp_path)
    start = next(cb for cb in second.trainer.callbacks if isinstance(cb, RecordStart)).start
    assert start["global_step"] == 2
    assert start["opt_steps"] == {2.0}  # LAMB's moments and step count came back
    assert start["sched"] == 2 and start["lr"] == pytest.approx(0.001)
    assert second.trainer.global_step == 4
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert final["global_step"] == 4 and final["lr_schedulers"][0]["last_epoch"] == 4
    steps = {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert steps == {4.0}
