"""Stop at the first non-finite training loss, before backward, naming the step and the samples."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class NonFiniteLossError(FloatingPointError):
    pass


class NanGuard(pl.Callback):
    """Raise `NonFiniteLossError` when the training loss is NaN or inf.

    The check runs in `on_before_backward`, so the weights are never updated from a bad loss. It costs one
    device-to-host sync per checked step; `every_n_steps` thins it out on fast GPUs.
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
        if trainer.global_step % self.every_n_steps:
            return
        if not torch.isfinite(loss.detach()).all():
            shown = self._keys[: self.max_keys]
            more = f" (+{len(self._keys) - len(shown)} more)" if len(self._keys) > len(shown) else ""
            raise NonFiniteLossError(
                f"training loss is {loss.detach().float().item()} at global step {trainer.global_step} "
                f"(epoch {trainer.current_epoch}, batch {self._batch_idx}); batch keys: {shown}{more}. "
                "Lower the lr, set trainer.gradient_clip_val, or check these samples."
            )
