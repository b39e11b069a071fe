"""The run directory holds one run: one live fit at a time, no outputs of an earlier run, no debris of a failed start.

- `RunLock`: `<run dir>/run.lock` (pid, host, process start time, Slurm job id) is created by the fit's global rank 0
  only (ranks > 0 of the same run never lock). A second fit into a directory whose lock belongs to a live process is
  refused, naming its pid and host. A lock is stale, and taken over, when its process is gone (same host: the pid
  is dead or is another process now) or it was left by an earlier incarnation of this Slurm job (a requeue: Slurm
  ended that process before starting this one, possibly on another node).
- `RunOutputs` (a callback): when a new fit (one that restored no checkpoint) starts training, the earlier run's
  outputs still in the directory (checkpoints, config, predictions, W&B and CSV logs: `RUN_OUTPUTS`; other files
  stay) move to `<run dir>.previous/`
  (replacing an older one), so the directory then holds only this run. Until then nothing of the earlier run is
  lost: the one file rewritten before (config.yaml, which the W&B config reads at fit start) waits under a hidden
  name and comes back if the run fails. `cleanup_failed_start` removes what a run created when it fails before its
  first step, so that no half-made run is left for later commands to mistake for one.
- `check_resume`: a resume must continue the checkpoint's run exactly; settings that differ from the checkpoint's
  saved hyperparameters are refused, naming each key, except runtime-only ones (applied, and said so).

(Over 400 lines because the lock, the outputs move, the resume check and the failed-start cleanup are one
contract about one directory, and each reads the others' files.)
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import socket
import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

LOCK = "run.lock"
PREVIOUS_SUFFIX = ".previous"


class RunDirError(ValueError):
    """A run-directory or resume problem; the message is one line naming the directory, file or key."""


# ------------------------------------------------------------------------------------------------ the lock
def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _stale(holder: dict[str, Any]) -> str | None:
    """Why the lock `holder` is stale, or None when its process may be alive."""
    host, pid = holder.get("host"), holder.get("pid")
    job = os.environ.get("SLURM_JOB_ID")
    if host == socket.gethostname() and isinstance(pid, int):
        if not _pid_alive(pid):
            return f"pid {pid} on {host} has ended"
        start = _proc_start(pid)
        if holder.get("start") and start and start != holder["start"]:
            return f"pid {pid} on {host} is another process now"
        return None
    if job and holder.get("slurm_job_id") == job:
        return f"left by an earlier run of this Slurm job {job} (requeued)"
    return None


class RunLock:
    """`<run_dir>/run.lock` held by this process (see the module docstring)."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, LOCK)
        self.me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _proc_start(os.getpid()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": sys.argv,
        }
        os.makedirs(run_dir, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(run_dir)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            return
        raise RunDirError(f"{run_dir}: could not take {self.path} (another fit is starting there at the same time)")

    def _take_over_if_stale(self, run_dir: str) -> None:
        try:
            with open(self.path) as f:
                holder = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError):  # half-written: its writer died, unless it is writing right now
            holder = {}
            if time.time() - os.path.getmtime(self.path) < 10:
                raise RunDirError(
                    f"{run_dir} is in use by another fit that is just starting ({self.path}); choose "
                    "another --name or --trainer.default_root_dir"
                ) from None
        why = _stale(holder) if holder else "unreadable"
        if why is None:
            raise RunDirError(
                f"{run_dir} is in use by another fit: pid {holder.get('pid')} on host {holder.get('host')} (started "
                f"{holder.get('started')}); wait for it to end, or choose another --name or "
                f"--trainer.default_root_dir. If that process is gone, delete {self.path}"
            )
        rank_zero_info(f"[perceiver-lit] {self.path}: stale lock ({why}); taking it over")
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        try:
            with open(self.path) as f:
                holder = json.load(f)
        except (OSError, ValueError):
            return
        if holder.get("pid") == self.me["pid"] and holder.get("host") == self.me["host"]:
            os.remove(self.path)


# ------------------------------------------------------------------------------------ one run's outputs only
def snapshot(run_dir: str) -> dict[str, tuple[int, int]]:
    """{relative path: (inode, mtime_ns)} of every file and link under `run_dir` (empty when it does not exist)."""
    out: dict[str, tuple[int, int]] = {}
    for root, dirs, files in os.walk(run_dir):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            st = os.lstat(path)
            out[os.path.relpath(path, run_dir)] = (st.st_ino, st.st_mtime_ns)
    return out


# What a run writes into its directory (paths relative to it; `*` crosses folders). Only these move aside when a new
# run replaces an earlier one: other files there (a sweep's trial.json and log.txt, a user's notes) are not a run's.
RUN_OUTPUTS = (
    "checkpoints/*",
    "hpc_ckpt_*.ckpt",
    "config.yaml",
    "config_*.yaml",
    "predictions-rank*.jsonl",
    "predictions.jsonl",
    "wandb/*",
    "wandb_run.json",
    "csv/*",
    "lightning_logs/*",
)


def is_run_output(rel: str) -> bool:
    return any(fnmatch.fnmatchcase(rel, pattern) for pattern in RUN_OUTPUTS)


def _unchanged(run_dir: str, before: dict[str, tuple[int, int]]) -> list[str]:
    """Paths of `before` still there as they were (the earlier run's; a file this run rewrote is this run's)."""
    left = []
    for rel, sig in before.items():
        try:
            st = os.lstat(os.path.join(run_dir, rel))
        except FileNotFoundError:
            continue
        if (st.st_ino, st.st_mtime_ns) == sig and rel != LOCK:
            left.append(rel)
    return sorted(left)


def _prune_empty_dirs(top: str, keep_top: bool = True) -> None:
    for root, _dirs, _files in os.walk(top, topdown=False):
        if root == top and keep_top:
            continue
        if not os.listdir(root):
            os.rmdir(root)


class RunOutputs(pl.Callback):
    """Moves the earlier run's outputs out of the run directory when a new fit starts training; records whether
    this run got as far as its first step (see `cleanup_failed_start`).

    Args:
        run_dir: the run directory.
        before: `snapshot(run_dir)` taken before this run wrote anything.
        fit: True for `fit`. A fit that restored no checkpoint (neither --ckpt_path nor a Slurm requeue's hpc
            checkpoint: `trainer.ckpt_path` is None) is a new run; a resume continues the run that is there.
    """

    def __init__(self, run_dir: str, before: dict[str, tuple[int, int]], fit: bool) -> None:
        self.run_dir, self.before, self.fit = run_dir, before, fit
        self.started = False
        self.aside: dict[str, str] = {}  # earlier run's file -> where it waits (set_aside)

    def set_aside(self, path: str) -> None:
        """Before this run overwrites `path` (e.g. config.yaml) of an earlier run, move that file to a hidden name
        beside it: when training starts it joins the earlier run's outputs (or, for a resume, is dropped); if this
        run fails before its first step, `restore_aside` puts it back."""
        rel = os.path.relpath(os.path.abspath(path), self.run_dir)
        if rel in self.aside or rel not in _unchanged(
            self.run_dir, {rel: self.before[rel]} if rel in self.before else {}
        ):
            return
        hidden = os.path.join(os.path.dirname(rel), f".{os.path.basename(rel)}.earlier")
        os.replace(os.path.join(self.run_dir, rel), os.path.join(self.run_dir, hidden))
        self.aside[rel] = hidden

    def restore_aside(self) -> None:
        for rel, hidden in self.aside.items():
            os.replace(os.path.join(self.run_dir, hidden), os.path.join(self.run_dir, rel))
        self.aside.clear()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.ckpt_path is known from here on (None: no checkpoint was restored, so this is a new run)
        if self.fit and trainer.is_global_zero:
            if trainer.ckpt_path is None:
                self.move_earlier_run()
            for hidden in self.aside.values():  # a resume: the run's own earlier config, now rewritten
                if os.path.exists(os.path.join(self.run_dir, hidden)):
                    os.remove(os.path.join(self.run_dir, hidden))
            self.aside.clear()

    def on_train_batch_end(self, *args: Any) -> None:
        self.started = True

    def _eval_started(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking:
            self.started = True

    on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _eval_started

    def move_earlier_run(self) -> None:
        moves = [(rel, rel) for rel in _unchanged(self.run_dir, self.before) if is_run_output(rel)] + list(
            (hidden, rel) for rel, hidden in self.aside.items()
        )
        self.aside.clear()
        if not moves:
            return
        dest = os.path.normpath(self.run_dir) + PREVIOUS_SUFFIX
        if os.path.lexists(dest):
            shutil.rmtree(dest)
        for src, rel in moves:
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            os.replace(os.path.join(self.run_dir, src), os.path.join(dest, rel))
        old = sorted(rel for _, rel in moves)
        _prune_empty_dirs(self.run_dir)
        shown = ", ".join(old[:6]) + (f" and {len(old) - 6} more" if len(old) > 6 else "")
        rank_zero_warn(
            f"{self.run_dir} held an earlier run; this new run (no --ckpt_path) replaces it: moved its "
            f"outputs ({shown}) to {dest}. To continue a run, pass --ckpt_path last"
        )


def cleanup_failed_start(run_dir: str, before: dict[str, tuple[int, int]], existed: bool) -> list[str]:
    """Remove what a run that failed before its first step created in `run_dir`; return the removed paths.

    Files of an earlier run (in `before`) are kept; a directory this run created is removed when left empty.
    """
    if not os.path.isdir(run_dir):
        return []
    removed = []
    for rel in sorted(snapshot(run_dir)):
        if rel not in before:
            path = os.path.join(run_dir, rel)
            os.remove(path)
            removed.append(rel)
    _prune_empty_dirs(run_dir)
    if not existed and not os.listdir(run_dir):
        os.rmdir(run_dir)
    return removed


# ----------------------------------------------------------------------------------------------- resumes
# Settings that change how a step is computed, not what it computes: a resume applies a change to them.
RUNTIME_KEYS = ("compile", "activation_checkpointing")
# Task settings that only training uses: an evaluation of a checkpoint ignores a difference in them.
TRAIN_ONLY_KEYS = (
    "optimizer",
    "lr",
    "weight_decay",
    "betas",
    "eps",
    "decay_embeddings",
    "schedule",
    "warmup_epochs",
    "warmup_steps",
    "decay_epochs",
    "decay_factor",
    "flat_epochs",
    "reference_batch_size",
    "mixup_alpha",
    "cutmix_alpha",
    "mix_prob",
    "mix_mode",
)
# Labels for the outputs, not part of the computation: data without names keeps the checkpoint's (the task restores
# them in on_load_checkpoint); names the data gives are used as given.
NAME_KEYS = ("class_names",)


def _norm(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((str(k), _norm(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    return value


def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = _norm(node)
    return out


def model_settings(hparams: Any) -> dict[str, Any]:
    """A LightningCLI model's saved hyperparameters as {CLI key: value}, e.g. model.init_args.net.init_args.lr."""
    hparams = {k: v for k, v in dict(hparams).items() if k != "_instantiator"}
    out: dict[str, Any] = {}
    if "_class_path" in hparams:
        out["model.class_path"] = hparams.pop("_class_path")
    return _flatten(hparams, "model.init_args", out)


def check_resume(saved: Any, current: Any, ckpt_path: str, stage: str, run_dir: str) -> None:
    """Refuse a resume (fit) or an evaluation whose settings differ from the checkpoint's, naming each key.

    Args:
        saved: the checkpoint's `hyper_parameters`.
        current: the configured model's `hparams` (what this command would run).
        ckpt_path: the checkpoint, for the message.
        stage: "fit" (a resume) or an evaluation ("validate", "test", "predict").
        run_dir: the run directory, for the message.
    """
    if not saved or not current:
        return
    old, new = model_settings(saved), model_settings(current)
    applied, ignored, refused, unrecorded = [], [], [], []
    same_classes = {k: v for k, v in old.items() if k.endswith("class_path")} == {
        k: v for k, v in new.items() if k.endswith("class_path")
    }
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a == b:
            continue
        leaf = key.rsplit(".", 1)[-1]
        change = f"{key}: checkpoint {a!r}, now {b!r}"
        if same_classes and (key not in old or key not in new):  # an argument added or removed by a code update
            unrecorded.append(key)
        elif leaf in RUNTIME_KEYS:
            applied.append(change)
        elif key.count(".") == 2 and leaf in NAME_KEYS:
            if b is not None:
                applied.append(change)
            else:
                rank_zero_info(
                    f"[perceiver-lit] {ckpt_path}: the data names no classes; the checkpoint's {leaf} are used"
                )
        elif stage != "fit" and key.count(".") == 2 and leaf in TRAIN_ONLY_KEYS:  # a task argument
            ignored.append(change)
        else:
            refused.append(change)
    if refused:
        if stage == "fit":
            raise RunDirError(
                f"--ckpt_path {ckpt_path} resumes a run with other settings than this command's ("
                f"{'; '.join(refused)}). A resume continues the checkpoint's run exactly (weights, optimizer and "
                f"schedule state): resume with that run's own config ({os.path.join(run_dir, 'config.yaml')}); to "
                "train with the new settings from its weights, start a new run instead: drop --ckpt_path, choose "
                f"another --name, and pass --init_weights {ckpt_path} (only if the model's shapes are unchanged)"
            )
        raise RunDirError(
            f"--ckpt_path {ckpt_path} was trained with other settings than this command's ("
            f"{'; '.join(refused)}); {stage} it with the config it was trained with"
        )
    if unrecorded:
        rank_zero_info(
            f"[perceiver-lit] {ckpt_path}: arguments that the checkpoint's code or this code does not have "
            f"(a code update), taken as they are now: {', '.join(unrecorded)}"
        )
    if applied:
        rank_zero_info(
            f"[perceiver-lit] {stage} from {ckpt_path} with changed runtime settings, applied: {'; '.join(applied)}"
        )
    if ignored:
        rank_zero_info(
            f"[perceiver-lit] {stage} of {ckpt_path}: training settings that differ from the "
            f"checkpoint's are not used by evaluation: {'; '.join(ignored)}"
        )


def load_initial_weights(model: Any, path: str) -> None:
    """`--init_weights FILE`: a new run starts from a checkpoint's model weights (no optimizer, schedule or step).

    Raises:
        RunDirError: the checkpoint's weights do not fit the model, naming the first differing tensors.
    """
    from perceiver_lit.checkpoint_io import read_checkpoint

    state = read_checkpoint(path)["state_dict"]
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in sorted(own)
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = shapes + [f"{k} missing" for k in missing] + [f"{k} not in the model" for k in extra]
    if problems:
        raise RunDirError(
            f"--init_weights {path} does not fit the configured model: {'; '.join(problems[:4])}"
            + (f" and {len(problems) - 4} more" if len(problems) > 4 else "")
        )
    model.load_state_dict(state, strict=True)
    rank_zero_info(f"[perceiver-lit] model weights initialised from {path} (a new run: no optimizer or schedule state)")
