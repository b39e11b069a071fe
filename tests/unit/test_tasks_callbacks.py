"""The training callbacks: throughput/MFU arithmetic, the run-directory checkpoint, the summary line."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import pytest
import torch

from perceiver_lit.callbacks import Checkpoint, Summary, Throughput
from perceiver_lit.callbacks.throughput import measure_matmul_flops
from perceiver_lit.tasks import Classification, MultilabelClassification
from tests.fixtures.training import TinyNet
from tests.unit.test_tasks import _batches, _loader


def test_throughput_logs_samples_per_sec_and_mfu():
    torch.manual_seed(0)
    task = Classification(TinyNet(num_classes=5), schedule="constant")
    cb = Throughput(window=2, peak_flops=1e9)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[cb],
    )
    trainer.fit(task, train_dataloaders=_loader(_batches(6, 8, 5)))
    sps = cb.last["perf/samples_per_sec_per_device"]
    assert sps > 0 and cb.last["perf/samples_per_sec"] == pytest.approx(sps)  # one device
    assert cb.last["perf/mfu"] == pytest.approx(3 * task.net.flops_per_sample() * sps / 1e9)


class _TickingThroughput(Throughput):
    """Throughput whose clock (the one hook that syncs the device) ticks 0.5 s per call and counts its calls."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clock_steps: list[int] = []

    def _clock(self, device: torch.device) -> float:
        assert super()._clock(device) > 0  # the real hook still runs (on CUDA: the sync)
        self.clock_steps.append(self._trainer_step)
        return 0.5 * len(self.clock_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._trainer_step = trainer.global_step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def test_throughput_syncs_only_at_window_edges_and_logs_its_figures(tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    task = Classification(TinyNet(num_classes=5), schedule="constant")
    cb = _TickingThroughput(window=2, peak_flops=1e9)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=CSVLogger(tmp_path, name="", version=""),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[cb],
        log_every_n_steps=1,
    )
    trainer.fit(task, train_dataloaders=_loader(_batches(6, 8, 5)))
    # 6 steps, window 2: the clock starts after step 1 and windows end after steps 3 and 5; step 6 opens a window.
    assert cb.clock_steps == [1, 3, 5]
    rows = [
        r for r in csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()) if r.get("perf/samples_per_sec")
    ]
    assert [int(r["step"]) for r in rows] == [3, 5]
    for r in rows:  # 2 steps x 8 samples in 0.5 s (one tick per window: a per-step clock would halve it)
        assert float(r["perf/samples_per_sec_per_device"]) == pytest.approx(32.0)
        assert float(r["perf/samples_per_sec"]) == pytest.approx(32.0)
        assert float(r["perf/mfu"]) == pytest.approx(3 * task.net.flops_per_sample() * 32.0 / 1e9)


def test_measured_cpu_peak_is_positive():
    assert measure_matmul_flops(n=64, repeats=2) > 0


class _NaNAfter(TinyNet):
    """NaN outputs from the `bad_from`-th forward on."""

    def __init__(self, bad_from: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bad_from, self.calls = bad_from, 0

    def forward(self, inputs, pad_mask=None):
        self.calls += 1
        out = super().forward(inputs)
        return out * float("nan") if self.calls > self.bad_from else out


def test_nan_guard_single_process_message_and_every_n_steps():
    from perceiver_lit.callbacks import NanGuard, NonFiniteLossError

    # NaN from step 1; checked every 2 steps: step 1 slips through (and NaNs the weights), step 2 is caught.
    task = Classification(_NaNAfter(bad_from=1, num_classes=5), schedule="constant")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[NanGuard(every_n_steps=2, max_keys=2)],
    )
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(task, train_dataloaders=_loader(_batches(4, 4, 5)))
    assert str(err.value) == (
        "training loss is nan at global step 2 (epoch 0, batch 2); batch keys: "
        "['s2-0', 's2-1'] (+2 more). Lower the lr, set trainer.gradient_clip_val, or check "
        "these samples."
    )
    assert trainer.global_step == 2 and task.net.calls == 3


def test_checkpoint_monitors_the_task_metric_in_the_run_dir(tmp_path):
    torch.manual_seed(0)
    ckpt = Checkpoint()
    task = MultilabelClassification(TinyNet(num_classes=4), schedule="constant")
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ckpt],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(
        task,
        train_dataloaders=_loader(_batches(2, 8, 4, multilabel=True)),
        val_dataloaders=_loader(_batches(1, 8, 4, multilabel=True)),
    )
    assert ckpt.monitor == "val/mAP" and ckpt.mode == "max"
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file() and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert ckpt.best_model_score == pytest.approx(float(trainer.callback_metrics["val/mAP"]))


def test_summary_prints_the_test_metrics(caplog):
    torch.manual_seed(0)
    summary = Summary()
    task = Classification(TinyNet(num_classes=5))
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[summary]
    )
    caplog.set_level(logging.INFO)
    metrics = trainer.test(task, dataloaders=_loader(_batches(2, 8, 5)), verbose=False)[0]
    assert summary.last_test["test/acc1"] == pytest.approx(metrics["test/acc1"])
    assert any(f"test/acc1={metrics['test/acc1']:.4f}" in r.getMessage() for r in caplog.records)


def test_summary_prints_one_line_per_epoch_with_train_and_val_metrics(caplog, tmp_path):
    torch.manual_seed(0)
    task = Classification(TinyNet(num_classes=5))
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[Summary()],
        max_epochs=2,
        default_root_dir=tmp_path,
    )
    caplog.set_level(logging.INFO)
    trainer.fit(task, train_dataloaders=_loader(_batches(2, 8, 5)), val_dataloaders=_loader(_batches(1, 8, 5)))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[perceiver-lit] epoch")]
    assert [line.split(" step")[0] for line in lines] == ["[perceiver-lit] epoch 1/2", "[perceiver-lit] epoch 2/2"]
    assert "step 4 " in lines[1]
    val = float(trainer.callback_metrics["val/acc1"])
    assert f"val/acc1={val:.4f}" in lines[1] and "train/loss=" in lines[1]


def _keep_run(callback, epochs: int = 3, extra: tuple = (), ckpt_path: str | None = None) -> tuple[dict, object]:
    """Fit a 16-pixel Perceiver (input_keep 0.5) with `callback`; return the inputs seen per epoch, and the net."""
    from perceiver_lit.models import ImageAdapter, Perceiver

    torch.manual_seed(0)
    net = Perceiver(
        ImageAdapter(input_shape=(4, 4, 1), num_frequency_bands=2),
        num_classes=3,
        num_latents=4,
        latent_dim=8,
        num_cross_attends=1,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
        input_keep=0.5,
    )
    seen: dict[int, set] = {}
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(extra),
        callbacks=[callback, *extra],
    )
    net.cross_attends[0].register_forward_pre_hook(
        lambda m, args: seen.setdefault(trainer.current_epoch, set()).add(args[1].shape[1]) if m.training else None
    )
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "inputs": torch.randn(4, 4, 4, 1, generator=g),
            "target": torch.randint(3, (4,), generator=g),
            "key": [str(j) for j in range(4)],
        }
        for _ in range(2)
    ]
    trainer.fit(Classification(net, schedule="constant"), train_dataloaders=_loader(batches), ckpt_path=ckpt_path)
    return seen, net


def test_unmasked_tuning_trains_the_last_epochs_on_every_input():
    from perceiver_lit.callbacks import UnmaskedTuning

    seen, net = _keep_run(UnmaskedTuning(epochs=1))
    assert seen == {0: {8}, 1: {8}, 2: {16}}  # 16 pixels: half in epochs 1-2, all in the last
    assert net.config.input_keep == 0.5  # the model is left as configured
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        UnmaskedTuning(epochs=-1)


def test_input_keep_schedule_follows_its_milestones():
    from perceiver_lit.callbacks import InputKeepSchedule

    seen, _ = _keep_run(InputKeepSchedule({0: 0.25, 1: 0.75, -1: 1.0}), epochs=4)
    assert seen == {0: {4}, 1: {12}, 2: {12}, 3: {16}}
    with pytest.raises(ValueError, match=r"milestones\[3\] = 1.5, expected a fraction in \(0, 1\]"):
        InputKeepSchedule({3: 1.5})


def test_unmasked_tuning_holds_after_a_resume_in_the_middle_of_an_unmasked_epoch(tmp_path):
    """Lightning skips on_train_epoch_start when it resumes mid-epoch: the schedule must still apply."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from perceiver_lit.callbacks import UnmaskedTuning

    saver = ModelCheckpoint(
        dirpath=tmp_path, filename="s{step}", every_n_train_steps=5, save_top_k=-1, auto_insert_metric_name=False
    )
    _keep_run(UnmaskedTuning(epochs=1), extra=(saver,))  # step 5 = the first batch of the last epoch
    seen, _ = _keep_run(UnmaskedTuning(epochs=1), ckpt_path=str(tmp_path / "s5.ckpt"))
    assert seen == {2: {16}}  # the rest of that epoch on every input


def test_checkpoint_mode_follows_a_named_monitor():
    assert Checkpoint(monitor="val/loss").mode == "min" and Checkpoint(monitor="val/mAP").mode == "max"
    assert Checkpoint(monitor="val/acc1").mode == "max" and Checkpoint(monitor="val/loss", mode="max").mode == "max"
    with pytest.raises(ValueError, match=r"checkpoint.monitor 'val/score'.*--checkpoint.mode"):
        Checkpoint(monitor="val/score")


def test_a_new_fit_into_a_used_run_dir_overwrites_best_and_last_and_says_so(tmp_path):
    def fit() -> Checkpoint:
        ckpt = Checkpoint()
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[ckpt],
            default_root_dir=str(tmp_path),
        )
        trainer.fit(
            Classification(TinyNet(num_classes=5), schedule="constant"),
            train_dataloaders=_loader(_batches(2, 8, 5)),
            val_dataloaders=_loader(_batches(1, 8, 5)),
        )
        return ckpt

    fit()
    first = (tmp_path / "checkpoints" / "best.ckpt").read_bytes()
    with pytest.warns(UserWarning, match=r"holds best.ckpt, last.ckpt from an earlier run; this new run .* overwrites"):
        ckpt = fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert ckpt.best_model_path.endswith("best.ckpt") and (tmp_path / "checkpoints" / "best.ckpt").read_bytes() != first


def test_resuming_into_a_longer_run_warns_that_the_restored_schedule_has_ended(tmp_path):
    def fit(epochs: int, ckpt_path: str | None = None) -> None:
        torch.manual_seed(0)
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[Checkpoint(monitor="val/loss")],
            default_root_dir=str(tmp_path),
        )
        trainer.fit(
            Classification(TinyNet(num_classes=5), schedule="cosine"),
            ckpt_path=ckpt_path,
            train_dataloaders=_loader(_batches(2, 8, 5)),
            val_dataloaders=_loader(_batches(1, 8, 5)),
        )

    fit(1)
    with pytest.warns(UserWarning, match=r"restored from the checkpoint ends at step 2 .* goes on to step 6"):
        fit(3, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
