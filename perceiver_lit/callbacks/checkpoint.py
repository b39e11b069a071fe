"""Checkpoints: `last.ckpt` for resuming and `best.ckpt` by the task's validation metric."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """ModelCheckpoint with run-directory defaults.

    - `dirpath` None: `<trainer.default_root_dir>/checkpoints` (not the logger's version folder), so a run's
      checkpoints sit next to its config.
    - `monitor="auto"`: the task's `monitor` attribute, e.g. ("val/acc1", "max") for classification.
    - Keeps `last.ckpt` (resume with `--ckpt_path <dir>/checkpoints/last.ckpt`) and the best one as `best.ckpt`.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "best", monitor: str | None = "auto",
                 mode: str = "max", save_last: bool = True, save_top_k: int = 1, **kwargs) -> None:
        self._auto = monitor == "auto"
        super().__init__(dirpath=dirpath, filename=filename, monitor=None if self._auto else monitor, mode=mode,
                         save_last=save_last, save_top_k=save_top_k, auto_insert_metric_name=False, **kwargs)

    def _default_dirpath(self, trainer: pl.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))

    def _find_last_checkpoints(self, trainer: pl.Trainer) -> set[str]:
        # `--ckpt_path last` is resolved before setup(): fill in the run-directory default first, or Lightning
        # looks in a folder that does not exist yet and resumes nothing.
        self._default_dirpath(trainer)
        return super()._find_last_checkpoints(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # `max_steps` can stop training mid-epoch, after the last save: keep last.ckpt at the final step.
        if self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        if self._auto and self.monitor is None:
            monitor, mode = getattr(pl_module, "monitor", ("val/loss", "min"))
            self.monitor, self.mode = monitor, mode
            self.kth_value = torch.tensor(-torch.inf if mode == "max" else torch.inf)
            self.best_model_score = None
        super().setup(trainer, pl_module, stage)
