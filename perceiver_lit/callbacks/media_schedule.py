"""When the W&B media callbacks (attention maps, flow images, reconstructions) log: the first batch of the first
validation loader, on rank zero, every `every_n_epochs` epochs, never in the sanity check."""

from __future__ import annotations

import lightning.pytorch as pl


def logs_media_now(trainer: pl.Trainer, batch_idx: int, dataloader_idx: int, every_n_epochs: int) -> bool:
    """Whether this validation batch is the one a media callback logs (see the module docstring)."""
    return (
        batch_idx == 0
        and dataloader_idx == 0
        and not trainer.sanity_checking
        and trainer.is_global_zero
        and trainer.current_epoch % every_n_epochs == 0
    )
