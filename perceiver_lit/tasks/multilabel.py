"""Multi-label classification (AudioSet): sigmoid cross-entropy, macro mean average precision."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MultilabelAveragePrecision

from perceiver_lit.tasks.base import Task


class MultilabelClassification(Task):
    """Batch `{"inputs", "target": float32 (B, C) multi-hot}` -> logits (B, C).

    Logs `train/loss`, `val/loss`, `val/mAP`, `test/loss`, `test/mAP`. mAP is torchmetrics'
    `MultilabelAveragePrecision(average="macro")` over the whole epoch (classes without positives are skipped
    by torchmetrics with a warning, as in AudioSet evaluation code).
    """

    monitor = ("val/mAP", "max")

    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        super().__init__(net, **kwargs)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": MultilabelAveragePrecision(self.num_classes, average="macro")
                for stage in ("val", "test")
            }
        )

    def shared_step(self, batch: dict, stage: str, batch_idx: int) -> torch.Tensor:
        target = batch["target"]
        logits = self(batch["inputs"], batch.get("pad_mask"))
        loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
        batch_size = target.shape[0]
        self.log_loss(stage, loss, batch_size)
        if f"{stage}_metrics" in self.metrics:
            metric = self.metrics[f"{stage}_metrics"]
            metric.update(logits.detach().float(), target.long())
            self.log(f"{stage}/mAP", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return loss
