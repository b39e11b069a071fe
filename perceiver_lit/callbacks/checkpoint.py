"""Checkpoints: `last.ckpt` for resuming and `best.ckpt` by the task's validation metric."""

from __future__ import annotations

import os
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from perceiver_lit.lightning_private import ModelCheckpointHooks

_LOWER_IS_BETTER = ("loss", "err", "perplexity", "ppl", "bpb", "bits")
_HIGHER_IS_BETTER = ("acc", "map", "auc", "f1", "precision", "recall", "top")


def _mode_for(monitor: str | None) -> str:
    """ "min" or "max" for a metric named `monitor`, from its name; a name that says neither is an error."""
    if monitor is None:
        return "min"
    leaf = monitor.rsplit("/", 1)[-1].lower()
    if any(w in leaf for w in _LOWER_IS_BETTER):
        return "min"
    if any(w in leaf for w in _HIGHER_IS_BETTER):
        return "max"
    raise ValueError(
        f"checkpoint.monitor {monitor!r}: cannot tell from its name whether higher or lower is better; "
        "set --checkpoint.mode min or max"
    )


class Checkpoint(ModelCheckpointHooks):
    """ModelCheckpoint with run-directory defaults.

    - `dirpath` None: `<trainer.default_root_dir>/checkpoints` (not the logger's version folder), so a run's
      checkpoints sit next to its config.
    - `monitor="auto"`: the task's `monitor` attribute, e.g. ("val/acc1", "max") for classification.
    - `mode` None: the task's for "auto"; for a named monitor, "min" for losses and errors, "max" for accuracies,
      mAP, AUC, F1, precision and recall; any other name must say `--checkpoint.mode`.
    - Keeps `last.ckpt` (resume with `--ckpt_path <dir>/checkpoints/last.ckpt`) and the best one as `best.ckpt`,
      always under these names: a new fit into a folder that holds them overwrites them, with a warning (through the
      CLI the earlier run's outputs move to `<run dir>.previous/` first: perceiver_lit/run_dir.py); Lightning's
      default would write `best-v1.ckpt` beside the old run's `best.ckpt`, which the docs, scripts and sweeps read.

    Args:
        enable_version_counter: False (the default here, unlike ModelCheckpoint's): keep the fixed names above. A
            named argument, so that LightningCLI, which passes every argument, passes this default and not
            ModelCheckpoint's True.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "best",
        monitor: str | None = "auto",
        mode: Literal["min", "max"] | None = None,
        save_last: bool = True,
        save_top_k: int = 1,
        enable_version_counter: bool = False,
        **kwargs,
    ) -> None:
        self._auto = monitor == "auto"
        if mode is None:
            mode = "max" if self._auto else _mode_for(monitor)
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=None if self._auto else monitor,
            mode=mode,
            save_last=save_last,
            save_top_k=save_top_k,
            auto_insert_metric_name=False,
            enable_version_counter=enable_version_counter,
            **kwargs,
        )

    def _default_dirpath(self, trainer: pl.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.realpath(os.path.join(trainer.default_root_dir, "checkpoints"))

    def before_find_last_checkpoints(self, trainer: pl.Trainer) -> None:
        # `--ckpt_path last` is resolved before setup(): fill in the run-directory default first, or Lightning
        # looks in a folder that does not exist yet and resumes nothing.
        self._default_dirpath(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if any(getattr(cb, "stopping_for_requeue", False) for cb in trainer.callbacks):
            # SIGUSR1 stopped the fit mid-epoch; the requeued job resumes from the hpc checkpoint of this step. A
            # last.ckpt saved now would count the cut epoch as complete (the resumed fit one epoch ahead).
            return
        # `max_steps` can stop training mid-epoch, after the last save: keep last.ckpt at the final step. Saved after
        # Lightning's end-of-step bookkeeping; where validation was due at this step, Lightning would count it twice
        # on resume, which PreemptionCheckpoint.on_train_start takes back (lightning_private.uncount_restored_step).
        if self.save_last and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, not in setup(): only now does trainer.ckpt_path say whether a checkpoint was restored (--ckpt_path,
        # or a Slurm requeue's hpc checkpoint). The CLI has already moved an earlier run out (run_dir.RunOutputs).
        if trainer.ckpt_path is None and os.path.isdir(self.dirpath):
            old = sorted(f for f in os.listdir(self.dirpath) if f.endswith(".ckpt"))
            if old:
                rank_zero_warn(
                    f"{self.dirpath} holds {', '.join(old)} from an earlier run; this new run (no "
                    "--ckpt_path) overwrites them. To continue that run instead pass --ckpt_path last; "
                    "to keep both, choose another --name or --trainer.default_root_dir"
                )
        super().on_train_start(trainer, pl_module)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._default_dirpath(trainer)
        if self._auto and self.monitor is None:
            monitor, mode = getattr(pl_module, "monitor", ("val/loss", "min"))
            self.monitor, self.mode = monitor, mode
            self.kth_value = torch.tensor(-torch.inf if mode == "max" else torch.inf)
            self.best_model_score = None
        super().setup(trainer, pl_module, stage)
