"""Checkpoint files: written atomically beside their target, read without unpickling, errors that name the file.

- `AtomicCheckpointIO` is the trainer's CheckpointIO (the CLI installs it in place of Lightning's default): every
  checkpoint Lightning writes (last.ckpt, best.ckpt, Slurm's hpc_ckpt_*.ckpt) goes to a temp file in the target's
  own folder, is fsynced, then `os.replace`d over the target. Lightning's default writes through fsspec into a temp
  file in $TMPDIR and moves it; when $TMPDIR is on another filesystem than the run directory (node-local /tmp, run
  directory on Lustre/GPFS/NFS) the move rewrites the target in place, and a kill during a save leaves it torn.
- `read_checkpoint` loads with `weights_only=True` and turns torch's errors into one line: a file that is not a
  checkpoint says so (not torch's advice to unpickle it), a truncated one names the file.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's (zip) format


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be used; the message is one line naming the file."""


def _is_remote(path: str) -> bool:
    return "://" in path


def read_checkpoint(path: str | os.PathLike, mmap: bool = False, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a Lightning checkpoint file on the CPU, without unpickling arbitrary objects.

    Args:
        path: the checkpoint file.
        mmap: map the tensors instead of reading them (cheap; for a look at the metadata).
        map_location: torch.load's.

    Raises:
        CheckpointFileError: missing, empty, truncated, or not a perceiver-lit / Lightning checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointFileError(f"checkpoint {path}: no such file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if size == 0:
        raise CheckpointFileError(
            f"checkpoint {path} is empty (0 bytes): its write was cut off; resume from another checkpoint of the run"
        )
    if head != _ZIP_MAGIC:
        raise CheckpointFileError(f"{path} is not a perceiver-lit or Lightning checkpoint (not a torch.save file)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:  # weights_only refused a Python object
        raise CheckpointFileError(
            f"{path} is not a perceiver-lit or Lightning checkpoint: it holds Python objects "
            "other than tensors and plain values, which perceiver-lit never unpickles"
        ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointFileError(
            f"checkpoint {path} is truncated or corrupt ({size} bytes; torch: {first}): its "
            "write was cut off; resume from another checkpoint of the run"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointFileError(
            f"{path} is not a perceiver-lit or Lightning checkpoint (a torch.save file with no state_dict)"
        )
    return ckpt


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temp file in `path`'s folder, fsync, then os.replace: `path` is the old file or the new one,
    never a torn one, whatever filesystem $TMPDIR is on."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide the run's checkpoints from the user's group
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that writes beside the target (atomic on any filesystem) and reads with one-line errors.

    `on_load` (set by the CLI): called with (path, checkpoint) after a load, before Lightning restores anything; the
    CLI checks there that a resumed checkpoint matches the configured run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.on_load = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or _is_remote(os.fspath(path)):
            return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        path = os.fspath(path)
        if _is_remote(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        checkpoint = read_checkpoint(path, map_location=map_location or "cpu")  # never unpickles: weights_only
        if self.on_load is not None:
            self.on_load(path, checkpoint)
        return checkpoint
