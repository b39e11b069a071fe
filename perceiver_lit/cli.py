"""`perceiver-lit`: the LightningCLI where models and data meet (fit / validate / test / predict).

    perceiver-lit fit --config configs/quickstart.yaml
    perceiver-lit test --config configs/quickstart.yaml --ckpt_path runs/quickstart/checkpoints/best.ckpt
    perceiver-lit fit --config configs/quickstart.yaml --print_config

What it adds to LightningCLI:
- Linked facts (docs/architecture.md): `data.num_classes -> model.init_args.net.init_args.num_classes` (and the
  task's `num_classes`), `data.input_shape -> model.init_args.net.init_args.adapter.init_args.input_shape`,
  `data.permute_seed -> ...adapter.init_args.permute_seed`, as jsonargparse links applied when the data module is
  instantiated. A link is added only where the configured net / adapter takes that argument; a value the user
  wrote that contradicts the data fails, naming both fields.
- A fast shape check before any training step: the model runs on one zero sample of `data.input_shape` (on the
  meta device, so paper-scale models cost nothing); a failure names the model and data fields.
- A run directory, `runs/<name>/` (name: `--name`, default the first config file's stem), holding config.yaml,
  checkpoints/{last,best}.ckpt and the W&B (or CSV) logs; `--trainer.default_root_dir` overrides it. It holds one
  run (perceiver_lit/run_dir.py): a `run.lock` refuses a second live fit; a new fit moves an earlier run's outputs
  to `<run dir>.previous/` when training starts; a fit that fails before its first step removes what it wrote.
- `--ckpt_path` runs the command line's settings (LightningCLI would parse the checkpoint's over them) and refuses
  a checkpoint whose settings differ, naming each key; `--init_weights FILE` starts a new run from its weights.
  Checkpoints are written beside their target and renamed (perceiver_lit/checkpoint_io.py).
- Loggers: W&B by default (project/group/tags from `--wandb.*`, offline unless WANDB_MODE=online), CSVLogger when
  wandb is not installed. Callbacks: Checkpoint (last + best by the task's metric), PreemptionCheckpoint (SIGTERM/
  SIGINT/Slurm SIGUSR1 save and requeue), Throughput (samples/s, MFU), NanGuard, LearningRateMonitor, GradNorm,
  Summary (a final line with the test metrics), and with W&B: RunConfig, AttentionMaps, PerClassTable;
  `predict` writes `<run dir>/predictions-rank<r>.jsonl` (PredictionWriter, `--prediction.top_k/threshold`);
  `fit` checkpoints carry the data config (SaveDataConfig) for `perceiver_lit.load`. `data.class_names` is linked
  into the task (`model.init_args.class_names`) when the data has names.
- The console script sets glibc malloc to keep freed activations for the next step (perceiver_lit/host_memory.py;
  PERCEIVER_LIT_MALLOC=system opts out).
- LightningCLI's automatic `--optimizer` / `--lr_scheduler` are off: the task owns its optimizer so weight-decay
  groups can never be dropped. Passing them is an unknown-key error.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning_utilities.core.imports import RequirementCache

from perceiver_lit.callbacks import (AttentionMaps, Checkpoint, GradNorm, NanGuard, PerClassTable, PreemptionCheckpoint,
                                     RunConfig, Summary, Throughput)
from perceiver_lit.callbacks.eval_failure import EvalFailureCheckpoint
from perceiver_lit.callbacks.predictions import PredictionWriter, SaveDataConfig
from perceiver_lit.callbacks.reconstructions import ReconstructionMedia
from perceiver_lit.callbacks.preemption import resume_path
from perceiver_lit.checkpoint_io import AtomicCheckpointIO, CheckpointFileError, read_checkpoint
from perceiver_lit.cli_errors import (ConfigError, OneLineErrorParser, exit_on_config_error, one_line_config_errors,
                                      size_error)
from perceiver_lit.hardware import warn_if_bf16_is_emulated
from perceiver_lit.run_dir import (RunDirError, RunLock, RunOutputs, check_resume, cleanup_failed_start,
                                   load_initial_weights, snapshot)
from datamodules.base import LogCorruptSamples
from datamodules.optional import one_line_missing

_WANDB_AVAILABLE = RequirementCache("wandb")
SUBCOMMANDS = ("fit", "validate", "test", "predict")

NET = "model.init_args.net"
PRETRAINED = ("perceiver_lit.models.pretrained", "perceiver_lit.models.pretrained.pretrained")  # the net factory
ADAPTER = f"{NET}.init_args.adapter"


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


# ------------------------------------------------------------------------------------------------ pre-scan
def _deep_merge(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(tree.get(k), dict):
            tree[k] = {}
        tree = tree[k]
    tree[keys[-1]] = value


def _get_dotted(tree: Any, dotted: str, default: Any = None) -> Any:
    for k in dotted.split("."):
        if not isinstance(tree, dict) or k not in tree:
            return default
        tree = tree[k]
    return tree


def prescan(argv: list[str]) -> tuple[dict, list[str]]:
    """Best-effort read of the config files and `--model.*`/`--data.*` overrides in argv, before parsing.

    jsonargparse needs to know which links to add before it parses, and links depend on which net and adapter the
    config chose; this finds their class paths (and any values the user wrote for linked fields).
    Returns (merged config tree, config file paths).
    """
    tree: dict = {}
    configs: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, value = (arg.split("=", 1) + [None])[:2] if arg.startswith("-") else (None, None)
        if key is not None and value is None and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 1
        i += 1
        if key in ("--config", "-c") and value is not None:
            configs.append(value)
            try:
                loaded = yaml.safe_load(Path(value).read_text()) if os.path.isfile(value) else yaml.safe_load(value)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(loaded, dict):
                _deep_merge(tree, loaded)
        elif key is not None and key.startswith(("--model.", "--data.")) and value is not None:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            _set_dotted(tree, key[2:], parsed)
    return tree, configs


def _import(class_path: Any) -> type | None:
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _accepts(cls: type | None, arg: str, default: bool = True) -> bool:
    """Whether cls.__init__ takes `arg`; `default` when the class is unknown (the architecture's contract)."""
    if cls is None:
        return default
    if not inspect.isclass(cls):  # a factory function (e.g. a preset) given as class_path
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            return default
        return arg in params
    for klass in inspect.getmro(cls):  # **kwargs pass arguments on to a parent's __init__
        try:
            params = inspect.signature(klass.__init__).parameters
        except (TypeError, ValueError):
            return default
        if arg in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(v) for v in value)
    return value


# Facts a data module may lack (the target keeps its own value then); "video.mean" is data.video.mean.
OPTIONAL_FACTS = ("class_names", "video.mean", "video.std")
LABELLED_SHAPE = "input_shape+label"  # input_shape plus {"label": (num_classes,)}


def _fact(attr: str, target: str, user_value: Any) -> Callable[[Any], Any]:
    """compute_fn for a link: read `data.<attr>`; fail if the user's value for `target` says otherwise."""

    def compute(data: Any) -> Any:
        if attr in OPTIONAL_FACTS:  # optional: data without it leaves the task's (or its checkpoint's) value
            value = data
            for part in attr.split("."):
                value = getattr(value, part, None)
            value = tuple(value) if isinstance(value, list) and attr != "class_names" else value
            if value is None or attr == "class_names":
                return user_value if value is None else value
        elif attr == LABELLED_SHAPE:  # the label is an input too (MultimodalAutoencoding): its one-hot width
            value = {**dict(getattr(data, "input_shape")), "label": (int(getattr(data, "num_classes")),)}
        elif not hasattr(data, attr):
            raise ValueError(f"data ({type(data).__name__}) has no `{attr}` fact, needed for {target}")
        else:
            value = getattr(data, attr)
        if user_value is not None and _normalise(user_value) != _normalise(value):
            raise ValueError(
                f"{target}={user_value!r} contradicts data.{attr}={value!r} ({type(data).__name__}); the CLI links "
                f"it from the data module: remove it from the config, or change the data settings"
            )
        return value

    return compute


def plan_links(tree: dict) -> list[tuple[str, str]]:
    """(data attribute, model target) links that fit the configured net and adapter."""
    task_cls = _import(_get_dotted(tree, "model.class_path"))
    net_cls = _import(_get_dotted(tree, f"{NET}.class_path"))
    adapter_cls = _import(_get_dotted(tree, f"{ADAPTER}.class_path"))
    links = []
    if task_cls is not None and _accepts(task_cls, "class_names", default=False):
        links.append(("class_names", "model.init_args.class_names"))
    if _accepts(task_cls, "num_classes"):
        links.append(("num_classes", "model.init_args.num_classes"))
    if task_cls is not None and _accepts(task_cls, "video_mean", default=False):  # the video normalisation
        links += [("video.mean", "model.init_args.video_mean"), ("video.std", "model.init_args.video_std")]
    shape_fact = LABELLED_SHAPE if getattr(task_cls, "label_input", False) else "input_shape"
    if _get_dotted(tree, f"{NET}") is not None or net_cls is None:
        if _accepts(net_cls, "num_classes"):
            links.append(("num_classes", f"{NET}.init_args.num_classes"))
        if _accepts(net_cls, "adapter") and (net_cls is None or _get_dotted(tree, ADAPTER) is not None):
            if _accepts(adapter_cls, "input_shape"):
                links.append((shape_fact, f"{ADAPTER}.init_args.input_shape"))
            if _accepts(adapter_cls, "permute_seed"):
                links.append(("permute_seed", f"{ADAPTER}.init_args.permute_seed"))
        elif net_cls is not None:  # nets without an adapter (e.g. a ConvNet baseline) may take the facts directly
            for attr in ("input_shape", "permute_seed"):
                if _accepts(net_cls, attr, default=False):
                    links.append((attr, f"{NET}.init_args.{attr}"))
    return links


# ---------------------------------------------------------------------------------------------- callbacks
class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config into the run directory (`<default_root_dir>/config.yaml` for fit,
    `config_<subcommand>.yaml` otherwise), overwriting, so re-running into the same directory works.

    An earlier run's file is set aside first (RunOutputs.set_aside): it moves to `<run dir>.previous/` with the rest
    of that run when training starts, or comes back if this run fails before its first step."""

    def __init__(self, *args: Any, subcommand: str | None = None, outputs: RunOutputs | None = None,
                 **kwargs: Any) -> None:
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
            self.parser.save(self.config, os.path.join(trainer.default_root_dir, name), skip_none=False,
                             overwrite=True, multifile=self.multifile)
        self.already_saved = True


# ------------------------------------------------------------------------------------------------ the CLI
def _fit_resumes(root: str, ckpt_path: Any) -> bool:
    """Whether `fit` into `root` restores a checkpoint: --ckpt_path, or a Slurm restart / hpc checkpoint (the cases
    in which preemption.resume_path and Lightning resume without --ckpt_path)."""
    if ckpt_path:
        return True
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return False
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 or any(Path(root).glob("hpc_ckpt_*.ckpt"))


class PerceiverCLI(LightningCLI):
    """LightningCLI with linked data facts, a run directory, W&B defaults and an early shape check."""

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        self._argv = list(sys.argv[1:] if args is None else args)
        self._tree, self._configs = prescan(self._argv)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("seed_everything_default", 1234)
        self._run_dir: str | None = None
        self._lock: RunLock | None = None
        self._outputs: RunOutputs | None = None
        kwargs.setdefault("parser_class", OneLineErrorParser)  # a union error: one line, not a dump (cli_errors.py)
        try:
            super().__init__(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                             args=args, **kwargs)
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

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        # Tell the config callback which subcommand it saves for (file name), then build as usual.
        self.save_config_kwargs = {**self.save_config_kwargs, "subcommand": self.subcommand, "outputs": self._outputs}
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--name", type=str | None, default=None,
                            help="run name: runs/<name>/ and the W&B run name (default: the config file's stem)")
        parser.add_argument("--init_weights", type=str | None, default=None,
                            help="fit: start a new run from this checkpoint's model weights (no optimizer, schedule "
                                 "or step: unlike --ckpt_path, which resumes its run exactly)")
        parser.add_argument("--fast_check", type=bool, default=True,
                            help="run the model on one zero sample of data.input_shape before training")
        parser.add_argument("--float32_matmul_precision", type=Literal["highest", "high", "medium"], default="high",
                            help="torch.set_float32_matmul_precision on a CUDA device: 'high' lets the matmuls "
                                 "left in fp32 (under bf16-mixed: the loss, the metrics; all of them under 32-true) "
                                 "use TF32 tensor cores; 'highest' keeps full fp32. CPU runs are left in fp32.")
        parser.add_class_arguments(WandbSettings, "wandb")
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.add_lightning_class_args(Throughput, "throughput")
        parser.add_lightning_class_args(NanGuard, "nan_guard")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_class_arguments(PredictionWriter, "prediction")  # predict's output: --prediction.top_k/threshold
        for attr, target in plan_links(self._tree):
            parser.link_arguments("data", target, compute_fn=_fact(attr, target, _get_dotted(self._tree, target)),
                                  apply_on="instantiate")

    def _dump_config(self) -> None:
        # Lightning stores the model's hyperparameters from this dump and writes linked values into
        # `<...>.init_args`; a nested class whose every argument is linked has no `init_args` in the dump, so give
        # every class spec one.
        super()._dump_config()

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
            cfg.name = Path(self._configs[-1]).stem if self._configs and os.path.isfile(self._configs[-1]) else "default"
        if cfg.trainer.get("default_root_dir") is None:
            cfg.trainer.default_root_dir = os.path.join("runs", cfg.name)
        self._remember_run_dir(cfg)
        pretrained_net = _get_dotted(self._tree, f"{NET}.class_path") in PRETRAINED  # weights from its path
        if self.subcommand in ("validate", "test", "predict") and not cfg.get("ckpt_path") and not pretrained_net \
                and not cfg.get("init_weights"):
            rank_zero_warn(f"perceiver-lit {self.subcommand} without --ckpt_path evaluates the model's initial "
                           "(untrained) weights; pass --ckpt_path "
                           f"{os.path.join(cfg.trainer.default_root_dir, 'checkpoints', 'best.ckpt')} (or last.ckpt)")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        cfg = self._config()
        trainer_cfg = self._get(self.config_init, "trainer")
        if trainer_cfg.get("logger") in (None, True):
            trainer_cfg["logger"] = self._default_logger(cfg)
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        # LogCorruptSamples: `data/corrupt_samples` and `data/bad_shards`, summed over ranks, per train epoch
        extra = [Summary(), LogCorruptSamples()]
        if self.subcommand == "predict":
            options = cfg.get("prediction")
            extra.append(PredictionWriter(**(options.as_dict() if hasattr(options, "as_dict") else options or {})))
        if self.subcommand == "fit":
            self._dump_config()
            extra.append(SaveDataConfig(self.config_dump.get("data")))  # perceiver_lit.load rebuilds the data
        if self.subcommand == "fit":  # a validation that fails saves the epoch it comes after
            extra.append(EvalFailureCheckpoint())
        if trainer_cfg["logger"]:
            extra += [LearningRateMonitor(logging_interval="step"), GradNorm()]
        if _WANDB_AVAILABLE and type(trainer_cfg["logger"]).__name__ in ("WandbLogger", "RunLogger"):
            extra += [RunConfig(), AttentionMaps(), PerClassTable(),  # the W&B dashboard (docs/sweeps.md)
                      ReconstructionMedia()]  # autoencoding: reconstructions beside the originals
        callbacks += [cb for cb in extra if not any(isinstance(c, type(cb)) for c in callbacks)]
        self._outputs = RunOutputs(self._run_dir, self._before, fit=self.subcommand == "fit")
        trainer_cfg["callbacks"] = callbacks + [self._outputs]
        trainer = super().instantiate_trainer(**kwargs)
        self._set_up_checkpoint_io(trainer)
        if self.subcommand == "fit" and trainer.is_global_zero:  # one lock per run: ranks > 0 belong to rank 0's
            self._lock = RunLock(self._run_dir)
        return trainer

    def _default_logger(self, cfg: Any) -> Any:
        root = cfg.trainer.default_root_dir
        os.makedirs(root, exist_ok=True)
        if not _WANDB_AVAILABLE:
            from lightning.pytorch.loggers import CSVLogger

            rank_zero_warn(f"wandb is not installed ({_WANDB_AVAILABLE.message}); logging to CSV under {root}. "
                           "`pip install wandb` for W&B logging.")
            return CSVLogger(save_dir=root, name="csv")
        from perceiver_lit.wandb_run import RunLogger, run_identity

        w = cfg.wandb
        offline = w.offline if w.offline is not None else os.environ.get("WANDB_MODE", "offline") != "online"
        if os.environ.get("WANDB_MODE") == "disabled":
            offline = True
        # One W&B run per run directory and subcommand, continued by every restart (ids in <root>/wandb_run.json);
        # fit and test share a group. A new fit (no resume) replaces the directory's earlier run: new ids, so its
        # W&B run is never continued by another run's steps.
        new_fit = self.subcommand == "fit" and not _fit_resumes(root, cfg.get("ckpt_path"))
        run_id, group = run_identity(root, self.subcommand or "fit", w.group, new=new_fit)
        return RunLogger(name=cfg.name, save_dir=root, project=w.project, group=group, tags=list(w.tags or []),
                         entity=w.entity, offline=offline, job_type=self.subcommand, id=run_id, resume="allow")

    def before_fit(self) -> None:
        # Resume from the run's newest checkpoint by global step, hpc or last (Slurm restarts, `--ckpt_path last`).
        cfg = self.config_init[self.subcommand]
        cfg["ckpt_path"] = resume_path(self.trainer, cfg.get("ckpt_path"))

    # ---- run directory, checkpoints, resumes (perceiver_lit/run_dir.py, perceiver_lit/checkpoint_io.py)
    def _parse_ckpt_path(self) -> None:
        # Overrides LightningCLI's private `_parse_ckpt_path`, which parses the checkpoint's saved hyperparameters
        # over the command line, so `--ckpt_path` silently ran the checkpoint's settings. Here the command line is
        # what runs; the loaded checkpoint is checked against it (check_resume, through AtomicCheckpointIO.on_load).
        # A file that is not a usable checkpoint fails now, in one line, before anything is written.
        if not self.config.get("subcommand"):
            return
        cfg = self.config[self.config.subcommand]
        ckpt_path, init_weights = cfg.get("ckpt_path"), cfg.get("init_weights")
        if ckpt_path and init_weights:
            raise RunDirError(f"--ckpt_path {ckpt_path} (resume a run) and --init_weights {init_weights} (start a new "
                              "run from weights) exclude each other: pass one")
        for path in (ckpt_path, init_weights):
            # "last", "best", "hpc", "registry[:...]" are resolved by Lightning; a sharded FSDP checkpoint is a folder
            if path and path not in ("last", "best", "hpc") and not str(path).startswith("registry") \
                    and "://" not in str(path) and not os.path.isdir(path):
                read_checkpoint(path, mmap=True)

    def _remember_run_dir(self, cfg: Any) -> None:
        self._run_dir = os.path.abspath(cfg.trainer.default_root_dir)
        self._existed = os.path.isdir(self._run_dir)
        first_new = self._run_dir
        while not os.path.exists(os.path.dirname(first_new)):
            first_new = os.path.dirname(first_new)
        self._first_new_dir = None if self._existed else first_new
        self._before = snapshot(self._run_dir)

    def _set_up_checkpoint_io(self, trainer: Trainer) -> None:
        from lightning.pytorch.plugins.io import TorchCheckpointIO

        if type(trainer.strategy.checkpoint_io) is not TorchCheckpointIO:  # a user's own CheckpointIO stays
            return
        io = AtomicCheckpointIO()
        stage = self.subcommand
        io.on_load = lambda path, ckpt: check_resume(ckpt.get("hyper_parameters"), self.model.hparams, path,
                                                     stage, self._run_dir)
        trainer.strategy.checkpoint_io = io

    def _clean_failed_start(self) -> None:
        """After a failure before the first step: remove what this run created (see run_dir.py)."""
        if self._run_dir is None or (self._outputs is not None and self._outputs.started):
            return
        wandb = sys.modules.get("wandb")
        wandb_run = getattr(wandb, "run", None) if wandb is not None else None
        wandb_dir = os.path.abspath(os.path.dirname(wandb_run.dir)) if wandb_run is not None else None  # offline-run
        if wandb_run is not None:
            wandb.finish(exit_code=1)  # close its files before they are removed
        removed: list[str] = []
        if self._outputs is not None and self._lock is not None:
            self._outputs.restore_aside()  # the earlier run's config.yaml, set aside for this run's
        if self._lock is not None:  # only the lock holder may touch the directory (no other fit writes there)
            removed = cleanup_failed_start(self._run_dir, self._before, self._existed)
        elif self.subcommand in ("validate", "test", "predict"):  # a fit may be writing there: only this one's files
            for name in (f"config_{self.subcommand}.yaml", "wandb_run.json"):  # its config and W&B run id
                if name not in self._before and os.path.isfile(os.path.join(self._run_dir, name)):
                    os.remove(os.path.join(self._run_dir, name))
                    removed.append(name)
            if wandb_dir and wandb_dir.startswith(self._run_dir + os.sep) and os.path.isdir(wandb_dir) and \
                    not any(rel.startswith(os.path.relpath(wandb_dir, self._run_dir) + os.sep) for rel in self._before):
                shutil.rmtree(wandb_dir)
                removed.append(os.path.relpath(wandb_dir, self._run_dir))
                parent = os.path.dirname(wandb_dir)
                for name in os.listdir(parent):  # latest-run, debug.log: links into the run just removed
                    link = os.path.join(parent, name)
                    if os.path.islink(link) and not os.path.exists(link):
                        os.remove(link)
                if not os.listdir(parent):
                    os.rmdir(parent)
        if removed:
            rank_zero_info(f"[perceiver-lit] {self.subcommand} failed before its first step; removed what it wrote "
                           f"in {self._run_dir}: {', '.join(removed)}")
        if self._first_new_dir is not None:  # directories this command made and left empty
            d = self._run_dir
            while len(d) >= len(self._first_new_dir):
                if os.path.isdir(d):
                    if os.listdir(d):
                        break
                    os.rmdir(d)
                d = os.path.dirname(d)

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


def _zeros_for(shape: Any, dtype: torch.dtype, device: str) -> Any:
    if isinstance(shape, dict):
        return {k: _zeros_for(v, dtype, device) for k, v in shape.items()}
    return torch.zeros((1, *shape), dtype=dtype, device=device)


def _wants_tokens(net: torch.nn.Module) -> bool:
    """Text nets embed int64 token ids: an nn.Embedding in the adapter is the sign."""
    adapter = getattr(net, "adapter", None)
    return adapter is not None and any(isinstance(m, torch.nn.Embedding) for m in adapter.modules())


def check_task_fits_data(model: LightningModule, data: LightningDataModule) -> None:
    """Single- vs multi-label: the task's loss must match the targets the data module produces."""
    from perceiver_lit.tasks import Classification, MultilabelClassification

    multilabel = getattr(data, "multilabel", None)
    if multilabel is True and isinstance(model, Classification):
        raise ValueError(f"data ({type(data).__name__}) is multi-label (data.init_args.multilabel: true) but the task "
                         "is Classification: use perceiver_lit.tasks.MultilabelClassification or set multilabel: false")
    if multilabel is False and isinstance(model, MultilabelClassification):
        raise ValueError(f"the task is MultilabelClassification but data ({type(data).__name__}) is single-label: "
                         "set data.init_args.multilabel: true or use perceiver_lit.tasks.Classification")


def check_model_fits_data(model: LightningModule, data: LightningDataModule) -> None:
    """Run the net on one zero sample shaped like the data, on the meta device (no memory, no compute)."""
    check_task_fits_data(model, data)
    net = getattr(model, "net", None)
    shape = getattr(data, "input_shape", None)
    if net is None or not shape:
        return
    if getattr(model, "label_input", False) and isinstance(shape, dict):  # the task feeds the label in too
        shape = {**shape, "label": (int(model.num_classes),)}
    dtype = torch.long if _wants_tokens(net) else torch.float32
    where = (f"model.init_args.net ({type(net).__name__}) vs data ({type(data).__name__}, "
             f"input_shape={shape}, num_classes={getattr(data, 'num_classes', '?')})")
    try:
        meta_net = copy.deepcopy(net).to("meta")
        with torch.no_grad():
            out = meta_net(_zeros_for(shape, dtype, "meta"))
    except NotImplementedError:  # an op without a meta kernel: nothing checked, say so
        rank_zero_info(f"[perceiver-lit] fast_check skipped: the model does not run on the meta device")
        return
    except Exception as e:  # noqa: BLE001 - any failure means the model does not fit the data
        raise ValueError(f"The model does not fit the data: {where}: {type(e).__name__}: {e}") from e
    classes = getattr(model, "num_classes", None)
    if isinstance(out, torch.Tensor) and classes is not None and out.shape[-1] != classes:
        raise ValueError(f"The model's output has {out.shape[-1]} classes, the task expects {classes}: {where}")


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
