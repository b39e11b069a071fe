"""One readable line at the end of fit and test: parameter count, best checkpoint, the metrics."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k}={float(v):.4f}" for k, v in sorted(metrics.items()))


class Summary(pl.Callback):
    """Prints `[perceiver-lit] ...` lines: at fit start (parameters, run dir), fit end (best checkpoint and
    score) and test end (every `test/` metric). `last_test` keeps the test metrics for scripts and tests."""

    def __init__(self) -> None:
        self.last_test: dict[str, float] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        params = sum(p.numel() for p in net.parameters())
        rank_zero_info(f"[perceiver-lit] {type(net).__name__}: {params:,} parameters; run dir {trainer.default_root_dir}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "best_model_path", ""):
            score = ckpt.best_model_score
            rank_zero_info(
                f"[perceiver-lit] fit done at step {trainer.global_step}: best {ckpt.monitor}="
                f"{float(score):.4f} -> {ckpt.best_model_path}" if score is not None else
                f"[perceiver-lit] fit done at step {trainer.global_step}: {ckpt.best_model_path}"
            )

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last_test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        rank_zero_info(f"[perceiver-lit] test: {_fmt(self.last_test)}")
