"""Save what training has done when a validation inside `fit` fails.

A validation runs after a whole training epoch (hours on ImageNet). When it stops with an error (a shard damaged
after setup, too many corrupt samples, a pipe: source that broke), the regular `last.ckpt` of that epoch has not
been written yet, because ModelCheckpoint saves at the end of the validation: without this callback the epoch is
lost. The weights are whole (the error came from the data or the metric, not from a half-done optimizer step),
so `last.ckpt` is saved, and `fit --ckpt_path last` goes on from there once the data is fixed.
"""

from __future__ import annotations

import os

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from perceiver_lit.callbacks.preemption import _save_atomic


class EvalFailureCheckpoint(Callback):
    """On an exception raised during a validation inside `fit`, save `last.ckpt` (every ModelCheckpoint(save_last)
    folder, else `<default_root_dir>/checkpoints`). One process only: with several ranks, the one that failed may
    be alone, and saving is a collective that would wait for the others forever.

    Attributes:
        saved_path: the checkpoint written, or None.
    """

    def __init__(self) -> None:
        self.saved_path: str | None = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return  # PreemptionCheckpoint's case
        if trainer.state.fn != "fit" or not trainer.validating or trainer.sanity_checking or trainer.global_step == 0:
            return  # nothing trained yet, or a failure inside a training step (its state may be half-updated)
        if trainer.world_size > 1:
            rank_zero_warn(
                f"validation failed at global step {trainer.global_step}; with {trainer.world_size} "
                "ranks no checkpoint can be saved safely here (the last regular one is kept)"
            )
            return
        if not all(bool(torch.isfinite(p).all()) for p in pl_module.parameters()):
            return  # weights gone non-finite: the last regular checkpoint is worth more
        paths = [
            os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
            for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath
        ]
        for path in paths or [os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")]:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _save_atomic(trainer, path)
            self.saved_path = path
            rank_zero_info(
                f"[perceiver-lit] validation failed ({type(exception).__name__}) at global step "
                f"{trainer.global_step}: saved the trained weights to {path}; fix the data, then "
                f"`fit --ckpt_path {path}` goes on from there"
            )
