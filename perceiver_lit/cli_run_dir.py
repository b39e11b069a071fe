"""The CLI's side of the run directory (perceiver_lit/run_dir.py holds the lock, the outputs and the checks):
the resolved config written into it (SaveRunConfig), and what the directory held before this command (RunStart), so
that a command failing before its first step removes what it wrote."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

from perceiver_lit.run_dir import RunLock, RunOutputs, cleanup_failed_start, snapshot


class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config into the run directory (`<default_root_dir>/config.yaml` for fit,
    `config_<subcommand>.yaml` otherwise), overwriting, so re-running into the same directory works.

    An earlier run's file is set aside first (RunOutputs.set_aside): it moves to `<run dir>.previous/` with the rest
    of that run when training starts, or comes back if this run fails before its first step."""

    def __init__(
        self, *args: Any, subcommand: str | None = None, outputs: RunOutputs | None = None, **kwargs: Any
    ) -> None:
        kwargs["overwrite"] = True
        super().__init__(*args, **kwargs)
        self.subcommand, self.outputs = subcommand, outputs

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        name = self.config_filename if self.subcommand in (None, "fit") else f"config_{self.subcommand}.yaml"
        if trainer.is_global_zero:
            os.makedirs(trainer.default_root_dir, exist_ok=True)
            if self.outputs is not None and self.subcommand == "fit":
                self.outputs.set_aside(os.path.join(trainer.default_root_dir, name))
            self.parser.save(
                self.config,
                os.path.join(trainer.default_root_dir, name),
                skip_none=False,
                overwrite=True,
                multifile=self.multifile,
            )
        self.already_saved = True


@dataclass
class RunStart:
    """The run directory as this command found it.

    Args:
        run_dir: the absolute run directory.
        existed: whether it existed.
        first_new_dir: the outermost directory this command will create for it (None when it existed).
        before: its files then (run_dir.snapshot).
    """

    run_dir: str
    existed: bool
    first_new_dir: str | None
    before: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, root: str) -> RunStart:
        run_dir = os.path.abspath(root)
        existed = os.path.isdir(run_dir)
        first_new = run_dir
        while not os.path.exists(os.path.dirname(first_new)):
            first_new = os.path.dirname(first_new)
        return cls(run_dir, existed, None if existed else first_new, snapshot(run_dir))

    def clean_failed(self, subcommand: str | None, outputs: RunOutputs | None, lock: RunLock | None) -> None:
        """After a failure before the first step: remove what this run created (see run_dir.py)."""
        if outputs is not None and outputs.started:
            return
        wandb = sys.modules.get("wandb")
        wandb_run = getattr(wandb, "run", None) if wandb is not None else None
        wandb_dir = os.path.abspath(os.path.dirname(wandb_run.dir)) if wandb_run is not None else None  # offline-run
        if wandb_run is not None:
            wandb.finish(exit_code=1)  # close its files before they are removed
        removed: list[str] = []
        if outputs is not None and lock is not None:
            outputs.restore_aside()  # the earlier run's config.yaml, set aside for this run's
        if lock is not None:  # only the lock holder may touch the directory (no other fit writes there)
            removed = cleanup_failed_start(self.run_dir, self.before, self.existed)
        elif subcommand in ("validate", "test", "predict"):  # a fit may be writing there: only this one's files
            for name in (f"config_{subcommand}.yaml", "wandb_run.json"):  # its config and W&B run id
                if name not in self.before and os.path.isfile(os.path.join(self.run_dir, name)):
                    os.remove(os.path.join(self.run_dir, name))
                    removed.append(name)
            if (
                wandb_dir
                and wandb_dir.startswith(self.run_dir + os.sep)
                and os.path.isdir(wandb_dir)
                and not any(rel.startswith(os.path.relpath(wandb_dir, self.run_dir) + os.sep) for rel in self.before)
            ):
                shutil.rmtree(wandb_dir)
                removed.append(os.path.relpath(wandb_dir, self.run_dir))
                parent = os.path.dirname(wandb_dir)
                for name in os.listdir(parent):  # latest-run, debug.log: links into the run just removed
                    link = os.path.join(parent, name)
                    if os.path.islink(link) and not os.path.exists(link):
                        os.remove(link)
                if not os.listdir(parent):
                    os.rmdir(parent)
        if removed:
            rank_zero_info(
                f"[perceiver-lit] {subcommand} failed before its first step; removed what it wrote "
                f"in {self.run_dir}: {', '.join(removed)}"
            )
        if self.first_new_dir is not None:  # directories this command made and left empty
            d = self.run_dir
            while len(d) >= len(self.first_new_dir):
                if os.path.isdir(d):
                    if os.listdir(d):
                        break
                    os.rmdir(d)
                d = os.path.dirname(d)
