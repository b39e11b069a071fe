"""The logger the CLI gives a run whose `trainer.logger` is left unset: W&B (`--wandb.*`, offline unless
WANDB_MODE=online), one W&B run per run directory and subcommand continued by every restart; CSVLogger when wandb is
not installed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.imports import RequirementCache

_WANDB_AVAILABLE = RequirementCache("wandb")


@dataclass
class WandbSettings:
    """W&B run settings (used when trainer.logger is left unset).

    Args:
        project: W&B project.
        group: groups runs (e.g. a sweep or a recipe).
        tags: run tags.
        offline: None: offline unless WANDB_MODE=online (local runs need no account; `wandb sync` uploads later).
        entity: W&B entity (team); None: the default of the logged-in account.
    """

    project: str = "perceiver-lit"
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    offline: bool | None = None
    entity: str | None = None


def fit_resumes(root: str, ckpt_path: Any) -> bool:
    """Whether `fit` into `root` restores a checkpoint: --ckpt_path, or a Slurm restart / hpc checkpoint (the cases
    in which preemption.resume_path and Lightning resume without --ckpt_path)."""
    if ckpt_path:
        return True
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return False
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 or any(Path(root).glob("hpc_ckpt_*.ckpt"))


def default_logger(cfg: Any, subcommand: str | None) -> Any:
    """The run's logger, from the subcommand's parsed config (`name`, `wandb`, `trainer.default_root_dir`,
    `ckpt_path`)."""
    root = cfg.trainer.default_root_dir
    os.makedirs(root, exist_ok=True)
    if not _WANDB_AVAILABLE:
        from lightning.pytorch.loggers import CSVLogger

        rank_zero_warn(
            f"wandb is not installed ({_WANDB_AVAILABLE.message}); logging to CSV under {root}. "
            "`pip install wandb` for W&B logging."
        )
        return CSVLogger(save_dir=root, name="csv")
    from perceiver_lit.wandb_run import RunLogger, run_identity

    w = cfg.wandb
    offline = w.offline if w.offline is not None else os.environ.get("WANDB_MODE", "offline") != "online"
    if os.environ.get("WANDB_MODE") == "disabled":
        offline = True
    # One W&B run per run directory and subcommand, continued by every restart (ids in <root>/wandb_run.json);
    # fit and test share a group. A new fit (no resume) replaces the directory's earlier run: new ids, so its
    # W&B run is never continued by another run's steps.
    new_fit = subcommand == "fit" and not fit_resumes(root, cfg.get("ckpt_path"))
    run_id, group = run_identity(root, subcommand or "fit", w.group, new=new_fit)
    return RunLogger(
        name=cfg.name,
        save_dir=root,
        project=w.project,
        group=group,
        tags=list(w.tags or []),
        entity=w.entity,
        offline=offline,
        job_type=subcommand,
        id=run_id,
        resume="allow",
    )
