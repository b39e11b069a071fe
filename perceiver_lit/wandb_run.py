"""One W&B run per run directory and job type, kept across requeues, restarts and `--ckpt_path` resumes, and
finished cleanly when a signal stops the process.

- `<run dir>/wandb_run.json` holds the run ids (`{"group": ..., "fit": <id>, "test": <id>, ...}`), written once by
  global rank 0; every later `perceiver-lit fit` into that directory (a requeued Slurm job, `--ckpt_path last`)
  opens the same fit run with `resume="allow"`. fit and test of one run directory share a W&B group (the
  `--wandb.group` given, else one made for the directory), with job types "fit" and "test".
- `RunLogger.finish_run` finishes the run before the process exits on a signal (PreemptionCheckpoint calls it).
- Slurm signals every process of a job step, wandb's service (`wandb-core`) included, and SIGTERM stops that
  service at once (SIGUSR1 does not). A run whose service is gone drops what is still logged instead of raising
  `ConnectionResetError` into the training step, and `finish_run` opens the same run id in a fresh service to write
  its exit record. What the service had not written when it died (at most the last step's metrics) is lost.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import DummyExperiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only, rank_zero_warn

RUN_IDS_FILE = "wandb_run.json"


def run_identity(
    root: str | Path, job_type: str, group: str | None = None, new: bool = False
) -> tuple[str | None, str | None]:
    """(run id, group) of the `job_type` run ("fit", "test", ...) of the run directory `root`.

    Global rank 0 creates the ids on first use and keeps them in `<root>/wandb_run.json`; other ranks (which log
    nothing) only read them. An explicit `group` (`--wandb.group`) wins over the stored one. `new`: a new run
    replaces the directory's earlier one (a fit that resumes nothing): every stored id is replaced.
    """
    path = Path(root) / RUN_IDS_FILE
    ids: dict[str, str] = {}
    if new and rank_zero_only.rank == 0 and path.is_file():
        path.unlink()
    if path.is_file():
        try:
            ids = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path}: not valid JSON ({e}); it holds this run directory's W&B run ids, "
                "delete it to start new W&B runs"
            ) from e
        if not isinstance(ids, dict):
            raise ValueError(f"{path}: expected a JSON object of W&B run ids, got {type(ids).__name__}")
    if rank_zero_only.rank == 0 and (job_type not in ids or "group" not in ids):
        ids.setdefault("group", f"{Path(root).resolve().name}-{_new_id()}")
        ids.setdefault(job_type, _new_id())
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(ids, indent=1) + "\n")
        os.replace(partial, path)
    return ids.get(job_type), group or ids.get("group")


def _new_id() -> str:
    """A W&B-style run id: 8 characters of [a-z0-9]."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class RunLogger(WandbLogger):
    """WandbLogger for a run that resumes its W&B run and may lose its wandb service to a signal.

    Args:
        **kwargs: WandbLogger's; pass `id` (from `run_identity`) and `resume="allow"` to continue one run.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._service_lost = False
        self._finished = False

    @property
    def experiment(self) -> Any:
        if self._finished:  # after finish_run: what is still logged (Lightning's teardown) goes nowhere
            return DummyExperiment()
        run = WandbLogger.experiment.fget(self)  # rank 0 only; DummyExperiment elsewhere
        self._guard(run)
        return run

    def _guard(self, run: Any) -> None:
        """Make the run drop records once its service is gone, instead of raising into the training step."""
        interface = getattr(run, "_interface", None)
        if interface is None or getattr(interface, "_plit_guarded", False):
            return
        publish = interface._publish

        def guarded(record: Any, *, nowait: bool = False) -> None:
            if self._service_lost:
                return
            try:
                publish(record, nowait=nowait)
            except OSError:  # ConnectionResetError / BrokenPipeError: Slurm's SIGTERM stopped wandb-core
                self._service_lost = True

        interface._publish = guarded
        interface._plit_guarded = True

    def finish_run(self, exit_code: int = 0) -> None:
        """Finish the W&B run now (on the rank that has it): its exit record is written while the process can
        still do it, before a requeue or a signal ends the process. Later logging is dropped."""
        run = self._experiment
        if self._finished or run is None or not rank_zero_only.rank == 0:
            self._finished = True
            return
        self._finished = True
        if not self._service_lost and _service_alive():
            try:
                run.finish(exit_code=exit_code)
                return
            except OSError:
                pass
        self._service_lost = True
        try:
            _reopen_and_finish(run, self._wandb_init, exit_code)
        except Exception as e:  # noqa: BLE001 - the process is exiting on a signal: say so, do not crash there
            rank_zero_warn(
                f"W&B run {run.id}: its service was stopped by the signal and reopening it failed "
                f"({type(e).__name__}: {e}); `wandb sync` still uploads what was written"
            )


def finish_runs(loggers: list[Any], exit_code: int = 0) -> None:
    """`finish_run` on every RunLogger in `loggers`."""
    for logger in loggers:
        if isinstance(logger, RunLogger):
            logger.finish_run(exit_code)


def _service_alive() -> bool:
    """Whether this process's wandb service still runs (Slurm's SIGTERM stops it with the job's processes)."""
    try:
        from wandb.sdk import wandb_setup

        setup = wandb_setup._singleton
        proc = setup._connection._proc._process if setup and setup._connection and setup._connection._proc else None
    except AttributeError:  # another wandb version: assume it lives, finish() then says otherwise
        return True
    return proc is None or proc.poll() is None


def _reopen_and_finish(run: Any, init_kwargs: dict[str, Any], exit_code: int) -> None:
    """Drop the dead service's connection (and its atexit teardown, which would print a ConnectionResetError),
    open the same run id in a new service and finish it there: the run gets its exit record."""
    import wandb
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib.service import service_token

    setup = wandb_setup._singleton
    connection = getattr(setup, "_connection", None)
    if connection is not None:
        if getattr(connection, "_cleanup", None):
            connection._cleanup()  # unregisters the atexit teardown of the dead service
        connection._torn_down = True
        setup._connection = None
    service_token.clear_service_in_env()
    run._is_finished = True
    kwargs = {**init_kwargs, "id": run.id, "resume": "allow", "reinit": "create_new"}
    wandb.init(**kwargs).finish(exit_code=exit_code)
