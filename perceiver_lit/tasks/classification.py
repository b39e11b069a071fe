"""Single-label classification: cross-entropy with label smoothing, optional MixUp/CutMix, top-1/top-5 accuracy."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from perceiver_lit.tasks.base import Task
from perceiver_lit.tasks.mixing import MixUpCutMix


class Classification(Task):
    """Batch `{"inputs", "target": int64 (B,)}` -> logits (B, num_classes).

    Logs `train/loss`, `train/acc1`, `val/loss`, `val/acc1`, `val/acc5`, `test/loss`, `test/acc1`, `test/acc5`
    (acc5 only with >= 5 classes). Accuracy is micro (over samples), torchmetrics' `MulticlassAccuracy`.

    Args:
        label_smoothing: cross-entropy label smoothing (0.1 in the Perceiver IO ImageNet recipe).
        mixup_alpha, cutmix_alpha: Beta(alpha, alpha) mixing ratios; 0 turns each off. The ImageNet recipes use
            DeepMind's: MixUp 0.2, CutMix 1.0 (a uniform box area).
        mix_prob: probability that a training batch is mixed at all.
        mix_mode: with both on, "split" (DeepMind: half of each batch MixUp, half CutMix, a ratio per sample) or
            "switch" (timm: one of the two per batch, one ratio per batch). See `tasks/mixing.py`.
        **kwargs: optimizer and schedule, see `Task`.
    """

    monitor = ("val/acc1", "max")

    def __init__(
        self,
        net: nn.Module,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        mix_mode: Literal["split", "switch"] = "switch",
        **kwargs: Any,
    ) -> None:
        super().__init__(net, **kwargs)
        self.label_smoothing = label_smoothing
        self.mixing = MixUpCutMix(mixup_alpha, cutmix_alpha, prob=mix_prob, mode=mix_mode)
        # One metric object per stage: states never leak between train, val and test.
        # (ModuleDict keys may not be "train": it would shadow nn.Module.train.)
        self.metrics = nn.ModuleDict({f"{s}_metrics": self._make_metrics(s) for s in ("train", "val", "test")})

    def _make_metrics(self, stage: str) -> MetricCollection:
        metrics = {"acc1": MulticlassAccuracy(self.num_classes, top_k=1, average="micro")}
        if stage != "train" and self.num_classes >= 5:
            metrics["acc5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
        return MetricCollection(metrics, prefix=f"{stage}/")

    def shared_step(self, batch: dict, stage: str, batch_idx: int) -> torch.Tensor:
        inputs, target = batch["inputs"], batch["target"]
        if stage == "train" and self.mixing.enabled:
            inputs, soft = self.mixing(inputs, target, self.num_classes)
            logits = self(inputs, batch.get("pad_mask"))
            loss = F.cross_entropy(logits, soft, label_smoothing=self.label_smoothing)
            target = soft.argmax(-1)  # train/acc1 against the dominant label of each mixed sample
        else:
            logits = self(inputs, batch.get("pad_mask"))
            loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        metrics = self.metrics[f"{stage}_metrics"]
        metrics.update(logits.detach(), target)
        batch_size = target.shape[0]
        self.log_loss(stage, loss, batch_size)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=batch_size)
        return loss
