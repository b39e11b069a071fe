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
  checkpoints/{last,best}.ckpt and the W&B (or CSV) logs; `--trainer.default_root_dir` overrides it.
- Loggers: W&B by default (project/group/tags from `--wandb.*`, offline unless WANDB_MODE=online), CSVLogger when
  wandb is not installed. Callbacks: Checkpoint (last + best by the task's metric), PreemptionCheckpoint (SIGTERM/
  SIGINT/Slurm SIGUSR1 save and requeue), Throughput (samples/s, MFU), NanGuard, LearningRateMonitor, GradNorm,
  Summary (a final line with the test metrics), and with W&B: RunConfig, AttentionMaps, PerClassTable;
  `predict` writes `<run dir>/predictions-rank<r>.jsonl` (PredictionWriter).
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
from perceiver_lit.callbacks.predictions import PredictionWriter
from perceiver_lit.cli_errors import ConfigError, OneLineErrorParser, exit_on_config_error, one_line_config_errors
from perceiver_lit.hardware import warn_if_bf16_is_emulated
from datamodules.base import LogCorruptSamples
from datamodules.optional import one_line_missing

_WANDB_AVAILABLE = RequirementCache("wandb")
SUBCOMMANDS = ("fit", "validate", "test", "predict")

NET = "model.init_args.net"
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


def _fact(attr: str, target: str, user_value: Any) -> Callable[[Any], Any]:
    """compute_fn for a link: read `data.<attr>`; fail if the user's value for `target` says otherwise."""

    def compute(data: Any) -> Any:
        if not hasattr(data, attr):
            raise ValueError(f"data ({type(data).__name__}) has no `{attr}` fact, needed for {target}")
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
    if _accepts(task_cls, "num_classes"):
        links.append(("num_classes", "model.init_args.num_classes"))
    if _get_dotted(tree, f"{NET}") is not None or net_cls is None:
        if _accepts(net_cls, "num_classes"):
            links.append(("num_classes", f"{NET}.init_args.num_classes"))
        if _accepts(net_cls, "adapter") and (net_cls is None or _get_dotted(tree, ADAPTER) is not None):
            if _accepts(adapter_cls, "input_shape"):
                links.append(("input_shape", f"{ADAPTER}.init_args.input_shape"))
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
    `config_<subcommand>.yaml` otherwise), overwriting, so re-running into the same directory works."""

    def __init__(self, *args: Any, subcommand: str | None = None, **kwargs: Any) -> None:
        kwargs["overwrite"] = True
        super().__init__(*args, **kwargs)
        self.subcommand = subcommand

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        name = self.config_filename if self.subcommand in (None, "fit") else f"config_{self.subcommand}.yaml"
        if trainer.is_global_zero:
            os.makedirs(trainer.default_root_dir, exist_ok=True)
            self.parser.save(self.config, os.path.join(trainer.default_root_dir, name), skip_none=False,
                             overwrite=True, multifile=self.multifile)
        self.already_saved = True


# ------------------------------------------------------------------------------------------------ the CLI
class PerceiverCLI(LightningCLI):
    """LightningCLI with linked data facts, a run directory, W&B defaults and an early shape check."""

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        self._argv = list(sys.argv[1:] if args is None else args)
        self._tree, self._configs = prescan(self._argv)
        kwargs.setdefault("save_config_callback", SaveRunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("seed_everything_default", 1234)
        kwargs.setdefault("parser_class", OneLineErrorParser)  # a union error: one line, not a dump (cli_errors.py)
        super().__init__(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                         args=args, **kwargs)

    def instantiate_classes(self) -> None:
        with one_line_config_errors():  # a constructor's error inside a union: ConfigError naming the field
            super().instantiate_classes()

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        # Tell the config callback which subcommand it saves for (file name), then build as usual.
        self.save_config_kwargs = {**self.save_config_kwargs, "subcommand": self.subcommand}
        return super()._instantiate_trainer(config, callbacks)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--name", type=str | None, default=None,
                            help="run name: runs/<name>/ and the W&B run name (default: the config file's stem)")
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
        if self.subcommand in ("validate", "test", "predict") and not cfg.get("ckpt_path"):
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
            extra.append(PredictionWriter())
        if trainer_cfg["logger"]:
            extra += [LearningRateMonitor(logging_interval="step"), GradNorm()]
        if _WANDB_AVAILABLE and type(trainer_cfg["logger"]).__name__ == "WandbLogger":
            extra += [RunConfig(), AttentionMaps(), PerClassTable()]  # the W&B dashboard (docs/sweeps.md)
        callbacks += [cb for cb in extra if not any(isinstance(c, type(cb)) for c in callbacks)]
        trainer_cfg["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _default_logger(self, cfg: Any) -> Any:
        root = cfg.trainer.default_root_dir
        os.makedirs(root, exist_ok=True)
        if not _WANDB_AVAILABLE:
            from lightning.pytorch.loggers import CSVLogger

            rank_zero_warn(f"wandb is not installed ({_WANDB_AVAILABLE.message}); logging to CSV under {root}. "
                           "`pip install wandb` for W&B logging.")
            return CSVLogger(save_dir=root, name="csv")
        from lightning.pytorch.loggers import WandbLogger

        w = cfg.wandb
        offline = w.offline if w.offline is not None else os.environ.get("WANDB_MODE", "offline") != "online"
        if os.environ.get("WANDB_MODE") == "disabled":
            offline = True
        return WandbLogger(name=cfg.name, save_dir=root, project=w.project, group=w.group, tags=list(w.tags or []),
                           entity=w.entity, offline=offline, job_type=self.subcommand)

    # ---- early checks
    def after_instantiate_classes(self) -> None:
        device = self.trainer.strategy.root_device.type
        warn_if_bf16_is_emulated(self.trainer.precision, device)
        if device == "cuda":
            torch.set_float32_matmul_precision(self._config().get("float32_matmul_precision") or "high")
        if self._config().get("fast_check", True):
            check_model_fits_data(self.model, self.datamodule)


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
