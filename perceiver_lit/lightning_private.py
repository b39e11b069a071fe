"""Every use of a private Lightning or torch API, in one place. None of them has a public equivalent (each says what
it does for us below); tests/unit/test_lightning_private.py fails, naming the API, when an upgrade renames or
changes one, instead of the behaviour silently falling back to Lightning's.

- `LightningCLI._parse_ckpt_path`: LightningCLI.__init__ calls it after parsing, and it parses a checkpoint's saved
  hyperparameters over the command line. PerceiverCLI replaces it with `check_ckpt_path` (the command line runs).
- `LightningCLI._dump_config`: writes `config_dump`, from which Lightning's instantiator (`_InstantiatorFn`) takes
  the model's hyperparameters; PerceiverCLI completes it in `after_dump_config`.
- `lightning.pytorch.core.mixins.hparams_mixin._given_hyperparameters`: the config LightningCLI hands
  save_hyperparameters while it instantiates a module (`hparams_given_by_cli`).
- `ModelCheckpoint._find_last_checkpoints`: the candidates of `ckpt_path="last"` (`last_checkpoints`); Checkpoint
  fills in its run-directory default first (`before_find_last_checkpoints`).
- `Trainer._signal_connector.received_sigterm`: once set, Lightning raises SIGTERMException on every rank after
  the running batch (`mark_sigterm_received`; `Trainer.received_sigterm` is a read-only property).
- `_TrainingEpochLoop._batches_that_stepped` and `_should_check_val_fx`, `_FitLoop._data_fetcher`: the logger step
  and whether validation is due at the restored batch, to take back the step Lightning counts twice when it resumes
  a checkpoint saved at the end of an epoch or of the fit (`uncount_restored_step`).
- `torch._dynamo.eval_frame.OptimizedModule`: what torch.compile returns for a module (`is_compiled`).
- `torch.distributed._composable.checkpoint`: activation checkpointing of a module that composes with FSDP2's
  fully_shard (`checkpoint_activations`; torch.utils.checkpoint wraps a function, not a module).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters


class LightningCLIHooks(LightningCLI):
    """LightningCLI's private steps that PerceiverCLI changes, under names that say what they do for it."""

    def _parse_ckpt_path(self) -> None:
        self.check_ckpt_path()

    def check_ckpt_path(self) -> None:
        """Runs where LightningCLI parses `--ckpt_path`'s hyperparameters over the command line (its default)."""
        super()._parse_ckpt_path()

    def _dump_config(self) -> None:
        if hasattr(self, "config_dump"):  # made once, as Lightning's does
            return
        super()._dump_config()
        self.after_dump_config()

    def after_dump_config(self) -> None:
        """Runs once `self.config_dump` (the subcommand's config as a plain dict) is made."""

    def dumped_config(self) -> dict[str, Any]:
        """The subcommand's resolved config as a plain dict, as the model's hyperparameters are taken from it."""
        self._dump_config()
        return self.config_dump


class ModelCheckpointHooks(ModelCheckpoint):
    """ModelCheckpoint's private lookup of `ckpt_path="last"` candidates, with a step before it."""

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        self.before_find_last_checkpoints(trainer)
        return super()._find_last_checkpoints(trainer)

    def before_find_last_checkpoints(self, trainer: Trainer) -> None:
        """Runs before Lightning looks for this callback's last checkpoints (before setup, for `--ckpt_path last`)."""


def last_checkpoints(callback: ModelCheckpoint, trainer: Trainer) -> set[str]:
    """The paths Lightning's `ckpt_path="last"` would consider for this ModelCheckpoint."""
    return set(callback._find_last_checkpoints(trainer))


def mark_sigterm_received(trainer: Trainer) -> None:
    """Make Lightning stop as after a SIGTERM: SIGTERMException on every rank after the running batch."""
    trainer._signal_connector.received_sigterm = True


def uncount_restored_step(trainer: Trainer) -> bool:
    """Call at `on_train_start` of a resumed fit: make the logger step (`_batches_that_stepped`, W&B's
    `trainer/global_step`) of the first new step the global step again, where Lightning would make it one more.
    Returns whether it did.

    Under `max_steps` (iteration-based training) Lightning restarts the loops of any restored checkpoint. When the
    checkpoint's last batch was finished (batch progress completed == processed) and validation was due at it,
    Lightning takes the checkpoint for one saved at the end of that validation, before its end-of-step bookkeeping,
    and does that bookkeeping (`_batches_that_stepped += 1`) again before the next step. A checkpoint saved once the
    fit loop had closed the epoch (its epoch progress processed == started: `on_train_epoch_end`, where
    ModelCheckpoint saves at the end of every epoch, or `on_train_end`, where `Checkpoint` saves the end of a fit)
    had that step counted already: every later logger step would be one ahead of the global step.
    """
    fit_loop = trainer.fit_loop
    epoch_loop = fit_loop.epoch_loop
    epochs = fit_loop.epoch_progress.total
    if not (fit_loop.restarting and epoch_loop.restarted_on_last and 0 < epochs.processed == epochs.started):
        return False
    if not epoch_loop._should_check_val_fx(fit_loop._data_fetcher):
        return False  # a real batch comes next: Lightning adds nothing before it
    epoch_loop._batches_that_stepped -= 1
    return True


def hparams_given_by_cli() -> bool:
    """True while LightningCLI instantiates a module: save_hyperparameters then stores the config it hands over."""
    return _given_hyperparameters.get() is not None


def checkpoint_activations(module: torch.nn.Module) -> None:
    """Recompute `module`'s activations in backward instead of keeping them (in place: hooks on the module)."""
    from torch.distributed._composable import checkpoint

    checkpoint(module)


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether `module` is what torch.compile returned (its wrapper, not the module it compiles)."""
    return isinstance(module, torch._dynamo.eval_frame.OptimizedModule)
