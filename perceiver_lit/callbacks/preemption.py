"""Preemption: save a checkpoint on SIGTERM/SIGINT, and keep RNG states in every checkpoint.

What Lightning 2.6 does by itself: on SIGTERM it sets `trainer.received_sigterm`, lets the running step finish,
broadcasts the flag to all ranks and raises `SIGTERMException` (it saves nothing); on SIGINT a `KeyboardInterrupt`
lands wherever Python is, possibly mid-step, and it exits without saving; under Slurm with auto-requeue, SIGUSR1
saves `hpc_ckpt_<n>.ckpt` in `default_root_dir` and requeues the job. Checkpoints hold weights, optimizer, LR
schedulers and loop counters, but no RNG state.

`PreemptionCheckpoint` adds the rest:
- SIGINT is turned into SIGTERM, so Ctrl-C also finishes the step and takes Lightning's graceful path;
- SIGTERM only sets a flag that all ranks agree on at the end of the step: Lightning's own handler broadcasts
  inside the signal handler, which hangs DDP when Slurm signals the ranks at different points of a step;
- under Slurm with auto-requeue it replaces Lightning's SIGUSR1 handler, which saves the hpc checkpoint inside the
  signal handler: ranks interrupted at different points then enter the checkpoint's collectives out of step with
  the training ones and hang. Here the handler only sets a flag; at the end of the next training step all ranks
  agree (any rank signalled), save `hpc_ckpt_<n>.ckpt` together and stop; in teardown, once Lightning has logged
  that step's and the epoch's metrics, the W&B run is finished (perceiver_lit.wandb_run) and rank 0 runs
  `scontrol requeue`. This works for every strategy, SingleDeviceStrategy included (sweep trials, 1-GPU jobs);
- on that path, at the end of the step where the ranks agree on SIGTERM, it saves `last.ckpt` into each
  `ModelCheckpoint(save_last=True)` folder (or `<default_root_dir>/checkpoints/last.ckpt` without one), written to
  a temp name and renamed, so a SIGKILL during the write never leaves a torn `last.ckpt`; once Lightning has raised
  `SIGTERMException` it finishes the W&B run. `fit --ckpt_path last` resumes from it at the same global step;
- both (hpc and `last`) are saved in `on_train_batch_end`, like Lightning's periodic checkpoints, whose resume
  Lightning gets right. Under `max_steps`, Lightning resumes a checkpoint saved after its end-of-step bookkeeping
  (`_batches_that_stepped += 1`) at a step where validation was due with that step counted twice (it takes it for
  one saved at the end of that validation): the logger step (`_batches_that_stepped`, W&B's `trainer/global_step`)
  would then be one ahead of the global step in that attempt and every later one. Such are ModelCheckpoint's
  end-of-epoch checkpoints (saved in `on_train_epoch_end`, after the epoch's validation) and `Checkpoint`'s
  `last.ckpt` at the end of a fit: `on_train_start` takes that step back (`lightning_private.uncount_restored_step`),
  so every resume logs its steps at their global steps. A save in `on_exception` after the step's validation is
  not covered (the epoch is still open there, as at the end of that validation), hence the saves at the end of the
  step. A `last.ckpt` saved at the end of a fit stopped for a requeue would count the cut epoch as complete:
  `Checkpoint` writes none then (`stopping_for_requeue`), and `newest_checkpoint` prefers the hpc checkpoint to a
  `last.ckpt` of the same step;
- a restarted fit resumes from the run's newest checkpoint by global step, hpc or last (`resume_path`, called by
  the CLI): a Slurm job requeued after USR1 and again after SIGTERM continues from the later one;
- every checkpoint (its own, ModelCheckpoint's, Slurm's hpc one) carries each rank's torch/CUDA/numpy/python RNG
  state, restored on resume.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from perceiver_lit.lightning_private import last_checkpoints, mark_sigterm_received, uncount_restored_step
from perceiver_lit.wandb_run import finish_runs


def collect_rng_state() -> dict[str, Any]:
    """This process's RNG states, as tensors and plain Python types (safe for `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `collect_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class PreemptionCheckpoint(Callback):
    """Save `last.ckpt` when SIGTERM or SIGINT stops `fit`; under Slurm auto-requeue, save `hpc_ckpt_<n>.ckpt`
    and requeue on SIGUSR1 at a step boundary on all ranks; carry RNG states in every checkpoint.

    Register it in every run (it costs one scalar all-reduce per step, and only under Slurm auto-requeue).

    Args:
        dirpath: where to write `last.ckpt` when no ModelCheckpoint(save_last=True) is configured
            (default `<default_root_dir>/checkpoints`).
        handle_sigint: turn SIGINT (Ctrl-C) into SIGTERM, so the step finishes and the checkpoint is saved.
    """

    def __init__(self, dirpath: str | None = None, handle_sigint: bool = True) -> None:
        self.dirpath = dirpath
        self.handle_sigint = handle_sigint
        self._previous: dict[int, Any] = {}
        self._requeue_signal: int | None = None  # set under Slurm auto-requeue
        self._requeue_requested = False
        self._requeued = False
        self._requeue_pending = False  # saved; `scontrol requeue` waits until this step's metrics are logged
        self._handles_sigterm = False
        self._sigterm_requested = False
        self._sigterm_saved = False  # last.ckpt saved at the end of the step where the ranks agreed on SIGTERM
        self._trainer: Trainer | None = None
        self._pending_rng: dict[str, Any] | None = None  # restored again at the first training step after a resume
        self.saved_path: str | None = None

    # --- signals -----------------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # Runs before Lightning registers its own handlers, which then leave an already-handled SIGUSR1 alone.
        if stage != "fit" or not _in_main_thread():
            return
        if self.handle_sigint:
            self._install(signal.SIGINT, _sigint_to_sigterm)
        env = _cluster_environment(trainer)
        if isinstance(env, SLURMEnvironment) and env.auto_requeue and env.requeue_signal is not None:
            self._requeue_signal = int(env.requeue_signal)
            self._install(self._requeue_signal, self._on_requeue_signal)

    def _install(self, signum: int, handler: Any) -> None:
        self._previous.setdefault(signum, signal.signal(signum, handler))

    def _on_requeue_signal(self, signum: int, frame: Any) -> None:
        self._requeue_requested = True  # acted on at the end of the running training step, on every rank

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._restore_signals()
        self._requeue(trainer)

    def _restore_signals(self) -> None:
        if _in_main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A resume from a checkpoint saved at the end of an epoch or of the fit: Lightning would count its last step
        # twice when validation was due there (module docstring). Here, once per fit: this callback is registered once.
        uncount_restored_step(trainer)
        # Lightning's SIGTERM handler (registered after setup) runs a broadcast inside the handler: under Slurm every
        # rank gets SIGTERM at a different point of its step, and that broadcast then meets another rank's training
        # collective and hangs until SIGKILL, with nothing saved. Here the handler only sets a flag, and the ranks
        # agree on it at the end of the step (on_train_batch_end). Lightning restores the handler at its teardown.
        if _in_main_thread():
            self._trainer = trainer
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._handles_sigterm = True

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if not self._sigterm_requested:
            launcher = self._trainer.strategy.launcher if self._trainer is not None else None
            if launcher is not None:  # ranks Lightning started itself (local DDP) get it from rank 0, as before
                launcher.kill(signum)
        self._sigterm_requested = True

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        may_requeue = self._requeue_signal is not None and not self._requeued
        if not (may_requeue or self._handles_sigterm):
            return
        requeue, term = self._requeue_requested, self._sigterm_requested
        if trainer.world_size > 1:
            # One small all-reduce per step (Lightning broadcasts its SIGTERM flag every step too): all ranks learn
            # that one was signalled, at the same point of the same step.
            flags = torch.tensor([float(requeue), float(term)], device=trainer.strategy.root_device)
            requeue, term = (bool(v > 0) for v in trainer.strategy.reduce(flags, reduce_op="sum").tolist())
        if term:
            # Saved here, not in on_exception: see the module docstring (a later save can miscount the logger step).
            if not self._requeued and not self._sigterm_saved:
                self._save_last(trainer)
            # Lightning raises SIGTERMException on every rank after this step; on_exception finishes the W&B run.
            mark_sigterm_received(trainer)
            return
        if not (requeue and may_requeue):
            return
        self._requeued = True
        path = trainer.strategy.broadcast(_next_hpc_path(trainer.default_root_dir))
        _save_atomic(trainer, path)
        self.saved_path = path
        rank_zero_info(f"Slurm requeue signal: saved {path} at global step {trainer.global_step}")
        self._requeue_pending = True
        trainer.should_stop = True  # Slurm stops this attempt now; the requeued job goes on from `path`

    @property
    def stopping_for_requeue(self) -> bool:
        """True from the hpc save on SIGUSR1 until teardown: the fit stops for a requeue, and the requeued job
        resumes from the hpc checkpoint. `Checkpoint` then writes no `last.ckpt` at train end: saved after Lightning
        closed the epoch, it would be resumed with the cut epoch counted complete."""
        return self._requeue_pending

    def _requeue(self, trainer: Trainer) -> None:
        """Finish the W&B run, then requeue: in teardown, after Lightning has logged the saved step's metrics and
        the epoch's (Slurm's SIGTERM follows the requeue closely and stops every process of the job, wandb's
        service included: requeueing earlier lost the last rows and left the run without an exit record)."""
        if not self._requeue_pending:
            return
        self._requeue_pending = False
        finish_runs(trainer.loggers, exit_code=0)
        if trainer.is_global_zero:
            _scontrol_requeue()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_signals()
        if not isinstance(exception, SIGTERMException):
            return  # a crash mid-step: its state may be half-updated, so we keep the last regular checkpoint
        if not (self._requeued or self._sigterm_saved):
            # SIGTERMException without our flag (Lightning's own handler, before on_train_start): no step ran here.
            self._save_last(trainer)
        finish_runs(trainer.loggers, exit_code=interrupted_exit_status())

    def _save_last(self, trainer: Trainer) -> None:
        for path in self._last_paths(trainer):
            _save_atomic(trainer, path)
            self.saved_path = path
            rank_zero_info(f"Preempted at global step {trainer.global_step}: saved {path}")
        self._sigterm_saved = True

    def _last_paths(self, trainer: Trainer) -> list[str]:
        paths = [
            os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
            for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath
        ]
        if not paths:
            paths = [os.path.join(self.dirpath or os.path.join(trainer.default_root_dir, "checkpoints"), "last.ckpt")]
        return paths

    # --- RNG state in every checkpoint ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        # Runs on every rank while a checkpoint is dumped (rank 0 writes it): gather all ranks' states.
        state = collect_rng_state()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            return {"rng": states}
        return {"rng": [state]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("rng") or []
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if states:
            self._pending_rng = states[rank] if rank < len(states) else states[0]
            restore_rng_state(self._pending_rng)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # Again at the first step after a resume: between the load and this step the new run draws from the global
        # RNGs where the uninterrupted one did not (the train DataLoader's new iterator draws its base seed from
        # torch's; a sanity-check validation), so the step would otherwise draw other numbers.
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None


def checkpoint_step(path: str | Path) -> int | None:
    """The global step stored in a checkpoint file (or in a sharded checkpoint folder's `meta.pt`), read without
    unpickling (weights_only) and without reading its tensors (mmap); None for a file that is no readable
    checkpoint (torn by a kill, empty, foreign)."""
    target = Path(path) / "meta.pt" if Path(path).is_dir() else Path(path)
    try:
        ckpt = torch.load(target, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["global_step"])
    except (OSError, RuntimeError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError):
        return None


def run_checkpoints(trainer: Trainer) -> list[str]:
    """Every checkpoint a fit of this run directory may resume from: Slurm's `hpc_ckpt_<n>.ckpt` in
    `default_root_dir` and the `last` checkpoint(s) of each ModelCheckpoint (or PreemptionCheckpoint's)."""
    paths = {str(p) for p in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")}
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            paths |= last_checkpoints(cb, trainer)  # Lightning's own `ckpt_path="last"` candidates
    for cb in trainer.callbacks:
        if isinstance(cb, PreemptionCheckpoint):
            paths |= set(cb._last_paths(trainer))
    return sorted(p for p in paths if os.path.exists(p) and not p.endswith(".partial"))


def newest_checkpoint(paths: list[str]) -> tuple[str, int] | None:
    """(path, global step) of the checkpoint with the highest global step; None if none of `paths` is readable.

    Ties: an `hpc_ckpt_<n>.ckpt`, then the newer file. The hpc checkpoint was saved at the end of its training step
    (PreemptionCheckpoint on SIGUSR1); a `last.ckpt` of the same step may have been saved later in that step (at
    the end of its validation, of the epoch or of the fit), with that step's epoch closed.
    """
    steps = [
        (step, Path(p).name.startswith("hpc_ckpt_"), os.path.getmtime(p), p)
        for p in paths
        if (step := checkpoint_step(p)) is not None
    ]
    if not steps:
        return None
    step, _, _, path = max(steps)
    return path, step


def resume_path(trainer: Trainer, ckpt_path: Any) -> Any:
    """The checkpoint `fit` resumes from: the run's newest by global step, whatever its kind.

    Lightning alone resumes a Slurm job from its newest `hpc_ckpt_<n>.ckpt` (USR1 requeue), even when a later
    `last.ckpt` exists (saved on SIGTERM by `scontrol requeue` or preemption, or periodically after that resume),
    and `--ckpt_path last` ignores the hpc checkpoints. Both then retrain steps. Here both pick the checkpoint
    with the highest global step among the hpc and `last` checkpoints. Applies to `--ckpt_path last`, and, with no
    `--ckpt_path`, under Slurm when the job was restarted (SLURM_RESTART_COUNT > 0) or holds an hpc checkpoint;
    any other value is returned as given.
    """
    if ckpt_path not in (None, "last"):
        return ckpt_path
    paths = run_checkpoints(trainer)
    if ckpt_path is None:
        restarted = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
        has_hpc = any(Path(p).name.startswith("hpc_ckpt_") for p in paths)
        if not (SLURMEnvironment.detect() and (restarted or has_hpc)):
            return None
    newest = newest_checkpoint(paths)
    if newest is None:
        return ckpt_path  # None: a fresh start; "last": Lightning warns that there is none
    rank_zero_info(
        f"Resuming from {newest[0]} (global step {newest[1]}): the newest of {', '.join(Path(p).name for p in paths)}"
    )
    return newest[0]


def _cluster_environment(trainer: Trainer) -> Any:
    """The run's cluster environment for every strategy: SingleDeviceStrategy has no `cluster_environment`, but
    the accelerator connector detected one (SLURMEnvironment under Slurm) for it too; Lightning's own signal
    handlers read it from there."""
    env = getattr(trainer.strategy, "cluster_environment", None)
    if env is None:
        env = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    return env


def _next_hpc_path(folder: str) -> str:
    """`<folder>/hpc_ckpt_<n+1>.ckpt`, the name Lightning looks for when a requeued job starts."""
    numbers = [
        int(m.group(1))
        for p in Path(folder).glob("hpc_ckpt_*.ckpt")
        if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))
    ]
    return os.path.join(folder, f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt")


def _scontrol_requeue() -> None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        rank_zero_warn(
            f"`scontrol requeue {job}` failed ({result.returncode}): {result.stderr.strip()}; "
            "the job will not restart by itself (is it submitted with --requeue?)"
        )
    else:
        rank_zero_info(f"Requeued Slurm job {job}")


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


_SIGINT_RECEIVED = False  # Ctrl-C, which takes SIGTERM's path: the exit status should still say SIGINT


def _sigint_to_sigterm(signum: int, frame: Any) -> None:
    global _SIGINT_RECEIVED
    _SIGINT_RECEIVED = True
    os.kill(os.getpid(), signal.SIGTERM)


def interrupted_exit_status() -> int:
    """The shell's status for a run stopped by a signal after saving: 130 for Ctrl-C (SIGINT), 143 for SIGTERM.
    Lightning's SIGTERMException is a SystemExit without a code, which would exit 0: a script (`set -e`, the
    quickstart, a sweep trial) would take the cut run for a finished one."""
    return 128 + (signal.SIGINT if _SIGINT_RECEIVED else signal.SIGTERM)


def _save_atomic(trainer: Trainer, path: str) -> None:
    """Save to `<path>.partial`, then rename over `path` (a file, or a folder for sharded checkpoints)."""
    partial = path + ".partial"
    trainer.save_checkpoint(partial)
    if trainer.is_global_zero:
        target = Path(path)
        if target.is_dir():
            shutil.rmtree(target)
        elif Path(partial).is_dir() and target.exists():
            target.unlink()
        os.replace(partial, path)
    trainer.strategy.barrier("PreemptionCheckpoint")
