"""Stop at the first non-finite training loss, before backward, naming the step and the samples."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class NonFiniteLossError(FloatingPointError):
    pass


class NanGuard(pl.Callback):
    """Raise `NonFiniteLossError` when the training loss is NaN or inf.

    The check runs in `on_before_backward`, so the weights are never updated from a bad loss. It costs one
    device-to-host sync per checked step; `every_n_steps` thins it out on fast GPUs. With several processes the
    decision is collective: one tiny all-reduce per checked step (Lightning's `reduce_boolean_decision`, which also
    runs a barrier) tells every rank whether any rank's loss is non-finite, so all ranks raise together instead of
    the healthy ones waiting in the gradient all-reduce until the process-group timeout.
    """

    def __init__(self, every_n_steps: int = 1, max_keys: int = 8) -> None:
        self.every_n_steps, self.max_keys = max(1, every_n_steps), max_keys
        self._keys: list[str] = []
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        keys = batch.get("key", []) if isinstance(batch, dict) else []
        self._keys = [str(k) for k in keys]
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        # global_step is equal on all ranks, so every rank takes this branch alike and the collective below matches.
        if trainer.global_step % self.every_n_steps:
            return
        finite = bool(torch.isfinite(loss.detach()).all())
        # Any rank non-finite -> True on every rank (a no-op returning `not finite` in a single process).
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
        if finite:  # this rank is fine: another one saw the bad loss and raises with its batch keys
            raise NonFiniteLossError(
                f"another rank saw a non-finite training loss at {where}; the loss on this rank (global rank "
                f"{trainer.global_rank} of {trainer.world_size}) was {loss.detach().float().item()}. "
                "See the other rank's NonFiniteLossError for its batch keys; all ranks stop together."
            )
        shown = self._keys[: self.max_keys]
        more = f" (+{len(self._keys) - len(shown)} more)" if len(self._keys) > len(shown) else ""
        rank = f" on global rank {trainer.global_rank} of {trainer.world_size}" if trainer.world_size > 1 else ""
        raise NonFiniteLossError(
            f"training loss is {loss.detach().float().item()}{rank} at {where}; batch keys: {shown}{more}. "
            "Lower the lr, set trainer.gradient_clip_val, or check these samples."
        )
