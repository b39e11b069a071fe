"""Resuming from last.ckpt continues at the saved global step, with the optimizer and scheduler state, and logs its
steps at their global steps."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from tests.fixtures.slurm import QUICKSTART, csv_steps, tiny_fit_config
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


@pytest.mark.parametrize(
    "saved_by",
    [
        # ModelCheckpoint saves last.ckpt and best.ckpt in on_train_epoch_end after the epoch's validation
        "epoch_end",
        # no top-k save at that validation: Checkpoint.on_train_end saves last.ckpt at the end of the fit
        "fit_end",
    ],
)
def test_resume_at_an_epoch_end_logs_steps_from_the_global_step(fashion_shards, tmp_path, saved_by):
    # Both checkpoints are saved after Lightning's end-of-step bookkeeping at a step where validation was due (the
    # last of the epoch); under max_steps Lightning used to count that step again on resume, and every step of the
    # resumed fit was logged (CSV, W&B's trainer/global_step) one ahead of its global step.
    steps = fashion_shards.num_train // 16  # one epoch: ends with validation
    config = tiny_fit_config(tmp_path / "tiny.yaml", fashion_shards, max_steps=steps, log_dir=tmp_path)
    run = tmp_path / "run"
    cmd = ["fit", "--config", str(QUICKSTART), "--config", str(config), "--trainer.default_root_dir", str(run)]
    if saved_by == "fit_end":
        cmd += ["--checkpoint.save_top_k", "0"]
    run_cli(cmd, cwd=tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    loop = saved["loops"]["fit_loop"]
    assert saved["global_step"] == steps and loop["epoch_loop.batch_progress"]["is_last_batch"]
    epochs = loop["epoch_progress"]["total"]
    # after the fit loop closed the epoch (on_train_epoch_end: not yet completed; on_train_end: completed)
    assert (epochs["processed"], epochs["completed"]) == ((1, 0) if saved_by == "epoch_end" else (1, 1)), epochs
    assert loop["epoch_loop.state_dict"]["_batches_that_stepped"] == steps

    more = 3
    run_cli([*cmd, "--ckpt_path", str(last), "--trainer.max_steps", str(steps + more)], cwd=tmp_path)
    first, second = csv_steps(tmp_path).values()
    assert first == list(range(steps))
    assert second == list(range(steps, steps + more))
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    assert resumed["global_step"] == steps + more
    assert resumed["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] == steps + more
