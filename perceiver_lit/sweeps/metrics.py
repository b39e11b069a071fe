"""TrialMetrics: the callback that leaves a trial's final metrics in `metrics.json` for `perceiver-lit-sweep report`.

The sweep runner appends it to every `perceiver-lit` trial (`--trainer.callbacks+=...`), so base configs need not
know about sweeps. Under `wandb agent` it is absent and the W&B run summary plays the same role.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning as L

from perceiver_lit.sweeps.runner import METRICS_FILE, TRIAL_DIR_ENV


class TrialMetrics(L.Callback):
    """Write `trainer.callback_metrics` (the last logged value of every metric) to `<dir>/metrics.json` after each
    validation, at the end of fit and at the end of test. `<dir>` is `path`, else $PERCEIVER_LIT_TRIAL_DIR (set by
    the sweep runner), else `trainer.default_root_dir`."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def _file(self, trainer: L.Trainer) -> Path:
        root = self.path or os.environ.get(TRIAL_DIR_ENV) or trainer.default_root_dir
        return Path(root) / METRICS_FILE

    def _write(self, trainer: L.Trainer, stage: str) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        file = self._file(trainer)
        old = json.loads(file.read_text()) if file.exists() else {}
        metrics = dict(old.get("metrics", {}))
        for k, v in trainer.callback_metrics.items():
            x = float(v.detach().float().mean()) if hasattr(v, "detach") else float(v)
            metrics[k] = x if math.isfinite(x) else None  # JSON has no NaN
        out: dict[str, Any] = {
            "stage": stage,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "metrics": metrics,
        }
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1, sort_keys=True))
        tmp.replace(file)  # atomic: a reader never sees half a file

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "validate")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "fit")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "test")
