"""Corrupt-data reporting: the samples and shards the data module skipped, logged per epoch and checked per eval
pass. The callback knows the data module only by the attributes it reads (duck typing, no datamodules import)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


class LogCorruptSamples(L.Callback):
    """Logs `data/corrupt_samples` and `data/bad_shards` (summed over ranks) at each train epoch end.

    After each validation, test and predict pass it reports the samples that pass skipped as corrupt (summed over
    ranks): logged as `val/corrupt_samples` / `test/corrupt_samples`, and printed (always for `perceiver-lit
    validate/test/predict`, when any were skipped inside `fit`). The data module then judges the pass: more than
    its `max_eval_corrupt_fraction` of the samples read is its DataError, as that metric would describe a subset.

    It reads the data module by duck typing (docs/architecture.md, "What the training side reads from the data
    module"): `corrupt_samples`, `bad_shards`, `eval_counts` and `check_eval_corrupt(stage, skipped, read)`; a
    data module without them is not reported on.
    """

    def __init__(self) -> None:
        self._start = (0, 0)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if hasattr(dm, "corrupt_samples") and hasattr(dm, "bad_shards"):
            pl_module.log("data/corrupt_samples", float(dm.corrupt_samples), reduce_fx="sum", sync_dist=True)
            pl_module.log("data/bad_shards", float(dm.bad_shards), reduce_fx="sum", sync_dist=True)

    def _eval_start(self, trainer: L.Trainer) -> None:
        dm = trainer.datamodule
        if hasattr(dm, "eval_counts"):
            self._start = dm.eval_counts

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer)

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:  # a few batches only: no pass to report on
            self._eval_end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, pl_module, "test")

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer, pl_module, "predict")

    def _eval_end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if not hasattr(dm, "eval_counts"):
            return
        now = dm.eval_counts
        counts = torch.tensor([now[0] - self._start[0], now[1] - self._start[1]], dtype=torch.float64)
        if trainer.world_size > 1:  # every rank reaches the epoch end: one all-reduce, not per step
            counts = trainer.strategy.reduce(counts.to(pl_module.device), reduce_op="sum").cpu()
        skipped, read = int(counts[0]), int(counts[1])
        if stage != "predict":  # Lightning allows no logging in predict
            pl_module.log(f"{stage}/corrupt_samples", float(skipped), sync_dist=False)
        fraction = skipped / read if read else 0.0
        if skipped or trainer.state.fn != "fit":
            rank_zero_info(
                f"[perceiver-lit] {stage}: {skipped} of {read} samples skipped as corrupt ({fraction:.2%})"
                + (": see the warnings above" if skipped else "")
            )
        if hasattr(dm, "check_eval_corrupt"):
            dm.check_eval_corrupt(stage, skipped, read)  # the data module's limit: a DataError above it
