"""Readable lines: parameter count at fit start, one line per epoch, best checkpoint at fit end, test metrics.

The per-epoch line is what a log file shows when there is no terminal for the progress bar (Slurm, nohup, CI).
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k}={float(v):.4f}" for k, v in sorted(metrics.items()))


class Summary(pl.Callback):
    """Prints `[perceiver-lit] ...` lines: at fit start (parameters, run dir), at each training epoch's end (its
    seconds, the epoch's train/ metrics and the latest val/ metrics), at fit end (best checkpoint and score) and at
    test end (every `test/` metric). `last_test` keeps the test metrics for scripts and tests."""

    def __init__(self) -> None:
        self.last_test: dict[str, float] = {}
        self._epoch_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {
            k.removesuffix("_epoch"): v
            for k, v in trainer.callback_metrics.items()
            if (k.startswith("train/") and not k.endswith("_step")) or k.startswith("val/")
        }
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        rank_zero_info(
            f"[perceiver-lit] epoch {trainer.current_epoch + 1}{total} step {trainer.global_step} "
            f"({time.perf_counter() - self._epoch_start:.0f} s): {_fmt(metrics)}"
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        params = sum(p.numel() for p in net.parameters())
        rank_zero_info(
            f"[perceiver-lit] {type(net).__name__}: {params:,} parameters; run dir {trainer.default_root_dir}"
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "best_model_path", ""):
            score = ckpt.best_model_score
            rank_zero_info(
                f"[perceiver-lit] fit done at step {trainer.global_step}: best {ckpt.monitor}="
                f"{float(score):.4f} -> {ckpt.best_model_path}"
                if score is not None
                else f"[perceiver-lit] fit done at step {trainer.global_step}: {ckpt.best_model_path}"
            )

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        rank_zero_info(f"[perceiver-lit] test: {_fmt(self.last_test)}")
