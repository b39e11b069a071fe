"""`perceiver-lit`: the LightningCLI where models and data meet (fit / validate / test / predict).

    perceiver-lit fit --config configs/quickstart.yaml
    perceiver-lit test --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/best.ckpt
    perceiver-lit fit --config configs/quickstart.yaml --print_config

What it adds to LightningCLI:
- Linked facts (docs/architecture.md): `data.num_classes -> model.init_args.net.init_args.num_classes` (and the
  task's `num_classes`), `data.input_shape -> model.init_args.net.init_args.adapter.init_args.input_shape`,
  `data.permute_seed -> ...adapter.init_args.permute_seed`, as jsonargparse links applied when the data module is
  instantiated. A link is added only where the configured net / adapter takes that argument; a value the user
  wrote that contradicts the data fails, naming both fields (cli_links.py).
- A fast shape check before any training step: the model runs on one zero sample of `data.input_shape` (on the
  meta device, so paper-scale models cost nothing); a failure names the model and data fields (cli_checks.py).
- A run directory, `runs/<name>/` (name: `--name`, default the last --config file's stem), holding config.yaml,
  checkpoints/{last,best}.ckpt and the W&B (or CSV) logs; `--trainer.default_root_dir` overrides it. It holds one
  run (perceiver_lit/run_dir.py, cli_run_dir.py): a `run.lock` refuses a second live fit; a new fit moves an
  earlier run's outputs to `<run dir>.previous/` when training starts; a fit that fails before its first step
  removes what it wrote.
- `--ckpt_path` runs the command line's settings (LightningCLI would parse the checkpoint's over them) and refuses
  a checkpoint whose settings differ, naming each key; `--init_weights FILE` starts a new run from its weights.
  Checkpoints are written beside their target and renamed (perceiver_lit/checkpoint_io.py).
- Loggers (cli_logger.py): W&B by default (project/group/tags from `--wandb.*`, offline unless WANDB_MODE=online),
  CSVLogger when wandb is not installed. Callbacks: Checkpoint (last + best by the task's metric),
  PreemptionCheckpoint (SIGTERM/SIGINT/Slurm SIGUSR1 save and requeue), Throughput (samples/s, MFU), NanGuard,
  LearningRateMonitor, GradNorm, Summary (a final line with the test metrics), and with W&B: RunConfig,
  AttentionMaps, PerClassTable; `predict` writes `<run dir>/predictions-rank<r>.jsonl` (PredictionWriter,
  `--prediction.top_k/threshold`); `fit` checkpoints carry the data config (SaveDataConfig) for
  `perceiver_lit.load`. `data.class_names` is linked into the task (`model.init_args.class_names`) when the data
  has names.
- The console script sets glibc malloc to keep freed activations for the next step (perceiver_lit/host_memory.py;
  PERCEIVER_LIT_MALLOC=system opts out).
- The private LightningCLI steps it changes are in perceiver_lit/lightning_private.py.
- LightningCLI's automatic `--optimizer` / `--lr_scheduler` are off: the task owns its optimizer so weight-decay
  groups can never be dropped. Passing them is an unknown-key error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.optional import one_line_missing
from perceiver_lit.callbacks import (
    AttentionMaps,
    Checkpoint,
    GradNorm,
    NanGuard,
    PerClassTable,
    PreemptionCheckpoint,
    RunConfig,
    Summary,
    Throughput,
)
from perceiver_lit.callbacks.corrupt_samples import LogCorruptSamples
from perceiver_lit.callbacks.eval_failure import EvalFailureCheckpoint
from perceiver_lit.callbacks.predictions import PredictionWriter, SaveDataConfig
from perceiver_lit.callbacks.preemption import resume_path
from perceiver_lit.callbacks.reconstructions import ReconstructionMedia
from perceiver_lit.checkpoint_io import AtomicCheckpointIO, CheckpointFileError, read_checkpoint
from perceiver_lit.cli_checks import check_model_fits_data
from perceiver_lit.cli_errors import (
    ConfigError,
    OneLineErrorParser,
    exit_on_config_error,
    one_line_config_errors,
    size_error,
)
from perceiver_lit.cli_links import NET, get_dotted, link_data_facts, prescan
from perceiver_lit.cli_logger import WandbSettings, default_logger
from perceiver_lit.cli_run_dir import RunStart, SaveRunConfig
from perceiver_lit.hardware import warn_if_bf16_is_emulated
from perceiver_lit.lightning_private import LightningCLIHooks
from perceiver_lit.run_dir import RunDirError, RunLock, RunOutputs, check_resume, load_initial_weights

SUBCOMMANDS = ("fit", "validate", "test", "predict")
PRETRAINED = ("perceiver_lit.models.pretrained", "perceiver_lit.models.pretrained.pretrained")  # the net factory


class PerceiverCLI(LightningCLIHooks):
    """LightningCLI with linked data facts, a run directory, W&B defaults and an early shape check."""

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        self._argv = list(sys.argv[1:] if args is None else args)
        self._tree, _ = prescan(self._argv)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("seed_everything_default", 1234)
        self._start: RunStart | None = None  # the run directory as this command found it
        self._lock: RunLock | None = None
        self._outputs: RunOutputs | None = None
        kwargs.setdefault("parser_class", OneLineErrorParser)  # a union error: one line, not a dump (cli_errors.py)
        try:
            super().__init__(
                LightningModule,
                LightningDataModule,
                subclass_mode_model=True,
                subclass_mode_data=True,
                args=args,
                **kwargs,
            )
        except BaseException:
            self._clean_failed_start()
            raise
        finally:
            if self._lock is not None:
                self._lock.release()

    def instantiate_classes(self) -> None:
        with one_line_config_errors():  # a constructor's error inside a union: ConfigError naming the field
            try:
                super().instantiate_classes()
            except ValueError as e:  # a model size below 1: the exact config field (models/checks.py)
                sized = size_error(e, self._config())
                if sized is None:
                    raise
                raise sized from None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--name",
            type=str | None,
            default=None,
            help="run name: runs/<name>/ and the W&B run name (default: the config file's stem)",
        )
        parser.add_argument(
            "--init_weights",
            type=str | None,
            default=None,
            help="fit: start a new run from this checkpoint's model weights (no optimizer, schedule "
            "or step: unlike --ckpt_path, which resumes its run exactly)",
        )
        parser.add_argument(
            "--fast_check",
            type=bool,
            default=True,
            help="run the model on one zero sample of data.input_shape before training",
        )
        parser.add_argument(
            "--float32_matmul_precision",
            type=Literal["highest", "high", "medium"],
            default="high",
            help="torch.set_float32_matmul_precision on a CUDA device: 'high' lets the matmuls "
            "left in fp32 (under bf16-mixed: the loss, the metrics; all of them under 32-true) "
            "use TF32 tensor cores; 'highest' keeps full fp32. CPU runs are left in fp32.",
        )
        parser.add_class_arguments(WandbSettings, "wandb")
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_lightning_class_args(NanGuard, "nan_guard")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_class_arguments(PredictionWriter, "prediction")  # predict's output: --prediction.top_k/threshold
        link_data_facts(parser, self._tree)

    def after_dump_config(self) -> None:
        # Lightning stores the model's hyperparameters from this dump and writes linked values into
        # `<...>.init_args`; a nested class whose every argument is linked has no `init_args` in the dump, so give
        # every class spec one.

        def ensure(node: Any) -> None:
            if isinstance(node, dict):
                if "class_path" in node and not isinstance(node.get("init_args"), dict):
                    node["init_args"] = {}
                for value in node.values():
                    ensure(value)
            elif isinstance(node, list):
                for value in node:
                    ensure(value)

        ensure(self.config_dump)

    # ---- run directory and logger
    def _config(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        cfg = self._config()
        if not cfg.get("name"):
            # the last --config file, as jsonargparse recorded them (None for a config given as a YAML string)
            configs = list(self.config.get("config") or []) + list(cfg.get("config") or [] if self.subcommand else [])
            last = str(configs[-1]) if configs and configs[-1] is not None else None
            cfg.name = Path(last).stem if last and os.path.isfile(last) else "default"
        if cfg.trainer.get("default_root_dir") is None:
            cfg.trainer.default_root_dir = os.path.join("runs", cfg.name)
        self._start = RunStart.of(cfg.trainer.default_root_dir)
        pretrained_net = get_dotted(self._tree, f"{NET}.class_path") in PRETRAINED  # weights from its path
        if (
            self.subcommand in ("validate", "test", "predict")
            and not cfg.get("ckpt_path")
            and not pretrained_net
            and not cfg.get("init_weights")
        ):
            rank_zero_warn(
                f"perceiver-lit {self.subcommand} without --ckpt_path evaluates the model's initial "
                "(untrained) weights; pass --ckpt_path "
                f"{os.path.join(cfg.trainer.default_root_dir, 'checkpoints', 'best.ckpt')} (or last.ckpt)"
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        cfg = self._config()
        trainer_cfg = self.config_init.get(str(self.subcommand), self.config_init).get("trainer")
        if trainer_cfg.get("logger") in (None, True):
            trainer_cfg["logger"] = default_logger(cfg, self.subcommand)
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        # LogCorruptSamples: `data/corrupt_samples` and `data/bad_shards`, summed over ranks, per train epoch
        extra = [Summary(), LogCorruptSamples()]
        if self.subcommand == "predict":
            options = cfg.get("prediction")
            extra.append(PredictionWriter(**(options.as_dict() if hasattr(options, "as_dict") else options or {})))
        if self.subcommand == "fit":
            extra.append(SaveDataConfig(self.dumped_config().get("data")))  # perceiver_lit.load rebuilds the data
        if self.subcommand == "fit":  # a validation that fails saves the epoch it comes after
            extra.append(EvalFailureCheckpoint())
        if trainer_cfg["logger"]:
            extra += [LearningRateMonitor(logging_interval="step"), GradNorm()]
        if type(trainer_cfg["logger"]).__name__ in ("WandbLogger", "RunLogger"):  # (which need wandb installed)
            extra += [
                RunConfig(),
                AttentionMaps(),
                PerClassTable(),  # the W&B dashboard (docs/sweeps.md)
                ReconstructionMedia(),
            ]  # autoencoding: reconstructions beside the originals
        callbacks += [cb for cb in extra if not any(isinstance(c, type(cb)) for c in callbacks)]
        self._outputs = RunOutputs(self._start.run_dir, self._start.before, fit=self.subcommand == "fit")
        trainer_cfg["callbacks"] = callbacks + [self._outputs]
        # SaveRunConfig: which subcommand it saves for (its file name), and the outputs that set an older one aside
        self.save_config_kwargs = {**self.save_config_kwargs, "subcommand": self.subcommand, "outputs": self._outputs}
        trainer = super().instantiate_trainer(**kwargs)
        self._set_up_checkpoint_io(trainer)
        if self.subcommand == "fit" and trainer.is_global_zero:  # one lock per run: ranks > 0 belong to rank 0's
            self._lock = RunLock(self._start.run_dir)
        return trainer

    def before_fit(self) -> None:
        # Resume from the run's newest checkpoint by global step, hpc or last (Slurm restarts, `--ckpt_path last`).
        cfg = self.config_init[self.subcommand]
        cfg["ckpt_path"] = resume_path(self.trainer, cfg.get("ckpt_path"))

    # ---- run directory, checkpoints, resumes (perceiver_lit/run_dir.py, perceiver_lit/checkpoint_io.py)
    def check_ckpt_path(self) -> None:
        # Replaces LightningCLI's private `_parse_ckpt_path` (lightning_private.py), which parses the checkpoint's
        # saved hyperparameters over the command line, so `--ckpt_path` silently ran the checkpoint's settings. Here
        # the command line is what runs; the loaded checkpoint is checked against it (check_resume, through
        # AtomicCheckpointIO.on_load).
        # A file that is not a usable checkpoint fails now, in one line, before anything is written.
        if not self.config.get("subcommand"):
            return
        cfg = self.config[self.config.subcommand]
        ckpt_path, init_weights = cfg.get("ckpt_path"), cfg.get("init_weights")
        if ckpt_path and init_weights:
            raise RunDirError(
                f"--ckpt_path {ckpt_path} (resume a run) and --init_weights {init_weights} (start a new "
                "run from weights) exclude each other: pass one"
            )
        for path in (ckpt_path, init_weights):
            # "last", "best", "hpc", "registry[:...]" are resolved by Lightning; a sharded FSDP checkpoint is a folder
            if (
                path
                and path not in ("last", "best", "hpc")
                and not str(path).startswith("registry")
                and "://" not in str(path)
                and not os.path.isdir(path)
            ):
                read_checkpoint(path, mmap=True)

    def _set_up_checkpoint_io(self, trainer: Trainer) -> None:
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        if type(trainer.strategy.checkpoint_io) is not TorchCheckpointIO:  # a user's own CheckpointIO stays
            return
        io = AtomicCheckpointIO()
        stage = self.subcommand
        io.on_load = lambda path, ckpt: check_resume(
            ckpt.get("hyper_parameters"), self.model.hparams, path, stage, self._start.run_dir
        )
        trainer.strategy.checkpoint_io = io

    def _clean_failed_start(self) -> None:
        """After a failure before the first step: remove what this run created (cli_run_dir.RunStart)."""
        if self._start is not None:
            self._start.clean_failed(self.subcommand, self._outputs, self._lock)

    # ---- early checks
    def after_instantiate_classes(self) -> None:
        device = self.trainer.strategy.root_device.type
        warn_if_bf16_is_emulated(self.trainer.precision, device)
        if device == "cuda":
            torch.set_float32_matmul_precision(self._config().get("float32_matmul_precision") or "high")
        if self._config().get("fast_check", True):
            check_model_fits_data(self.model, self.datamodule)
        if self._config().get("init_weights"):
            load_initial_weights(self.model, self._config().init_weights)


def main(args: list[str] | None = None) -> None:
    """Console script `perceiver-lit`. Tests run `PerceiverCLI(args=[...])` in-process to inspect the result."""
    from perceiver_lit.host_memory import tune_host_allocator

    tune_host_allocator()  # freed activations stay in the heap: no page faults on them every step
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from perceiver_lit.callbacks.preemption import interrupted_exit_status
    from perceiver_lit.distributed import destroy_process_group

    try:
        with one_line_missing("perceiver-lit"):  # an optional package missing: one line naming the extra
            PerceiverCLI(args=args)
    except (CheckpointFileError, RunDirError) as e:  # one line naming the file, directory or key
        destroy_process_group()
        sys.exit(f"perceiver-lit: error: {e}")
    except ConfigError as e:
        exit_on_config_error("perceiver-lit", e)
    except SIGTERMException:  # stopped by SIGTERM / Ctrl-C, every rank together, after last.ckpt was saved
        destroy_process_group()
        sys.exit(interrupted_exit_status())
    # Lightning leaves the process group to interpreter exit, where gloo sometimes aborts. Not in a `finally`:
    # after a crash, the barrier would wait for a dead rank until the timeout.
    destroy_process_group()


if __name__ == "__main__":
    main()
