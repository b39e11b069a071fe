"""Input-keep schedules: how much of each training sample the Perceiver sees, epoch by epoch.

`Perceiver(input_keep=k)` shows each training sample a random fraction k of its input elements (faster steps, and a
regulariser); evaluation sees all of them. FLIP (Li et al., 2023) closes that train/eval gap with a short
"unmasked tuning" phase at the end, and progressive resizing (fast.ai; EfficientNetV2) trains on cheap, coarse
inputs first. `InputKeepSchedule` does both inside one run; `UnmaskedTuning(epochs)` is the common case.
The keep fraction is a function of the epoch alone, so a run resumed from a checkpoint picks up the same schedule.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info


def _subsampling_modules(module) -> list:
    return [m for m in module.modules() if hasattr(getattr(m, "config", None), "input_keep")]


class InputKeepSchedule(pl.Callback):
    """Set the model's `input_keep` by epoch: `milestones` maps an epoch (0-based) to the fraction kept from that
    epoch on; a negative epoch counts from the end (-2: the last two epochs, needs `trainer.max_epochs`).
    Before the first milestone the model keeps its configured `input_keep`.

        InputKeepSchedule({0: 0.33, 6: 0.5, -2: 1.0})   # coarse first, then half, then every input
    """

    def __init__(self, milestones: dict[int, float]) -> None:
        for epoch, keep in milestones.items():
            if not 0.0 < float(keep) <= 1.0:
                raise ValueError(f"{type(self).__name__}: milestones[{epoch}] = {keep}, expected a fraction in (0, 1]")
        self.milestones = {int(e): float(k) for e, k in milestones.items()}
        self._keep: dict[int, float] = {}

    def _start_epochs(self, trainer: pl.Trainer) -> list[tuple[int, float]]:
        if any(e < 0 for e in self.milestones) and (trainer.max_epochs is None or trainer.max_epochs < 0):
            raise ValueError(
                f"{type(self).__name__}: a milestone counted from the end ({self.milestones}) needs trainer.max_epochs"
            )
        return sorted((e if e >= 0 else trainer.max_epochs + e, k) for e, k in self.milestones.items())

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_epochs(trainer)  # fail before the first step
        self._keep = {id(m): m.config.input_keep for m in _subsampling_modules(pl_module)}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run resumed mid-epoch starts without on_train_epoch_start (Lightning skips it): apply the schedule here.
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scheduled = [k for e, k in self._start_epochs(trainer) if e <= trainer.current_epoch]
        for m in _subsampling_modules(pl_module):
            keep = scheduled[-1] if scheduled else self._keep.get(id(m), m.config.input_keep)
            if m.config.input_keep != keep:
                rank_zero_info(
                    f"[perceiver-lit] epoch {trainer.current_epoch + 1}: input_keep "
                    f"{m.config.input_keep} -> {keep} ({type(m).__name__})"
                )
                m.config.input_keep = keep

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for m in _subsampling_modules(pl_module):  # leave the model as configured
            m.config.input_keep = self._keep.get(id(m), m.config.input_keep)


class UnmaskedTuning(InputKeepSchedule):
    """Train the last `epochs` epochs on every input element (`input_keep = 1.0`); FLIP's unmasked tuning."""

    def __init__(self, epochs: int = 1) -> None:
        if epochs < 0:
            raise ValueError(f"UnmaskedTuning: epochs must be >= 0, got {epochs}")
        super().__init__({-epochs: 1.0} if epochs else {})
        self.epochs = epochs
