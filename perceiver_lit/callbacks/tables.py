"""W&B run tables: the resolved config (RunConfig) and, at test, per-class metrics (PerClassTable).

RunConfig: the CLI's task hyperparameters reach W&B through save_hyperparameters, but data and trainer settings
(batch size, permute_seed, epochs, ...) do not. RunConfig adds the whole resolved config that `perceiver-lit`
saved into the run directory (config.yaml), so runs filter by any key, e.g. `data.init_args.permute_seed`.

PerClassTable: a per-class accuracy table (single-label) or per-class AP table (multi-label), and for single-label
tasks with at most `max_confusion_classes` classes a confusion matrix (`test/confusion_matrix`, W&B's confusion
matrix chart over a table of Actual, Predicted, nPredictions), all with class names.

The task's logits are caught with a forward hook on the LightningModule (its `forward` calls the net), so any
task works unchanged. The per-class statistics are torchmetrics objects, so they sum over DDP ranks by themselves.
A no-op (one info line) when no WandbLogger is attached; skipped for outputs that are not (B, num_classes).
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
import yaml
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassStatScores,
    MultilabelAveragePrecision,
    MultilabelStatScores,
)


class RunConfig(pl.Callback):
    """Log the resolved config (`<default_root_dir>/config.yaml`, or `config_<stage>.yaml` for test/validate/
    predict, as written by perceiver-lit's SaveRunConfig) into the W&B run config, nested as in the YAML."""

    def _log(self, trainer: pl.Trainer, stage: str) -> None:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if logger is None:
            rank_zero_info("RunConfig: no WandbLogger attached; the resolved config is not logged")
            return
        if not trainer.is_global_zero:
            return
        names = ["config.yaml"] if stage == "fit" else [f"config_{stage}.yaml", "config.yaml"]
        path = next((p for n in names if os.path.isfile(p := os.path.join(trainer.default_root_dir, n))), None)
        if path is None:
            rank_zero_info(
                f"RunConfig: no {names[0]} in {trainer.default_root_dir} (not run by perceiver-lit?); "
                "only the task's hyperparameters are in the W&B config"
            )
            return
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
        logger.experiment.config.update(cfg, allow_val_change=True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, "fit")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, "test")


class PerClassTable(pl.Callback):
    """Log `test/per_class_accuracy` (columns class, name, accuracy, support) for single-label tasks, or
    `test/per_class_ap` (class, name, ap, support) for multi-label tasks, once at the end of each test run.

    Class names come from the task's `class_names` (linked from the data, or restored from its checkpoint), else the
    data module's, else "0", "1", ...

    Args:
        max_confusion_classes: log the confusion matrix only up to this many classes (it has C x C cells).
    """

    def __init__(self, max_confusion_classes: int = 100) -> None:
        self._logger: WandbLogger | None = None
        self._handle = None
        self._logits: Tensor | None = None
        self._stats = self._ap = self._confusion = None
        self.max_confusion_classes = max_confusion_classes

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if self._logger is None and stage == "test":
            rank_zero_info("PerClassTable: no WandbLogger attached; per-class tables are not logged")

    def _hook(self, module, args, output) -> None:
        self._logits = output

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._logger is None:
            return
        dm = trainer.datamodule
        n = int(getattr(pl_module, "num_classes", None) or dm.num_classes)
        self.multilabel = bool(getattr(dm, "multilabel", False))
        if self.multilabel:
            self._stats = MultilabelStatScores(n, average=None).to(pl_module.device)
            self._ap = MultilabelAveragePrecision(n, average=None).to(pl_module.device)
        else:
            self._stats = MulticlassStatScores(n, average=None).to(pl_module.device)
            if n <= self.max_confusion_classes:
                self._confusion = MulticlassConfusionMatrix(n).to(pl_module.device)
        self._handle = pl_module.register_forward_hook(self._hook)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._handle is None or self._logits is None:
            return
        logits, target = self._logits.detach(), batch["target"]
        self._logits = None
        if logits.ndim != 2:  # e.g. masked byte modelling (B, L, V): no per-class table
            return
        if self.multilabel:
            self._stats.update(logits.sigmoid(), target.long())
            self._ap.update(logits.float(), target.long())
        else:
            self._stats.update(logits, target)
            if self._confusion is not None:
                self._confusion.update(logits, target)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handle is None:
            return
        self._handle.remove()
        self._handle = None
        stats = self._stats.compute().cpu()  # (C, 5): tp, fp, tn, fn, support
        if stats.ndim != 2 or stats[:, 4].sum() == 0:
            return
        support = stats[:, 4]
        if self.multilabel:
            score, name, key = self._ap.compute().cpu(), "ap", "test/per_class_ap"
        else:
            score, name, key = stats[:, 0] / support.clamp(min=1), "accuracy", "test/per_class_accuracy"
        names = (
            getattr(pl_module, "class_names", None)
            or getattr(trainer.datamodule, "class_names", None)
            or [str(i) for i in range(len(support))]
        )
        confusion = self._confusion.compute().cpu() if self._confusion is not None else None  # (C, C) true x pred
        self._confusion = None
        rows = [
            [i, str(names[i]), None if s == 0 else round(float(a), 6), int(s)]
            for i, (a, s) in enumerate(zip(score.tolist(), support.tolist()))
        ]
        if trainer.is_global_zero:
            self._logger.log_table(key, columns=["class", "name", name, "support"], data=rows, step=trainer.global_step)
            if confusion is not None:
                self._log_confusion(confusion, [str(n) for n in names], trainer.global_step)

    def _log_confusion(self, confusion: Tensor, names: list[str], step: int) -> None:
        """W&B's confusion-matrix chart (the table layout `wandb.plot.confusion_matrix` makes), from counts."""
        import wandb

        rows = [[names[t], names[p], int(confusion[t, p])] for t in range(len(names)) for p in range(len(names))]
        table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows)
        chart = wandb.plot_table(
            "wandb/confusion_matrix/v1",
            table,
            {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"},
            {"title": "Confusion matrix"},
        )
        self._logger.experiment.log({"test/confusion_matrix": chart, "trainer/global_step": step})
