"""PredictionWriter: `perceiver-lit predict` writes `<run dir>/predictions-rank<r>.jsonl`, one line per sample.

Each line holds the sample's WebDataset key and, for (B, C) logits, the top-k classes with their probabilities
(softmax for single-label, sigmoid for multi-label tasks); for (B, L, V) token logits (masked byte modelling), the
argmax token id per position. One file per rank, so nothing is gathered across processes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Args:
    top_k: classes written per sample for classification logits.
    """

    def __init__(self, top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.top_k = top_k
        self._file = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.makedirs(trainer.default_root_dir, exist_ok=True)
        self.path = os.path.join(trainer.default_root_dir, f"predictions-rank{trainer.global_rank}.jsonl")
        self._file = open(self.path, "w")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        logits = prediction["logits"].detach().float().cpu()
        keys = prediction.get("key") or [None] * len(logits)
        if logits.ndim == 3:  # (B, L, V): token predictions
            rows = [{"key": k, "tokens": t.tolist()} for k, t in zip(keys, logits.argmax(-1))]
        else:  # (B, C)
            multilabel = type(pl_module).__name__.startswith("Multilabel")
            probs = torch.sigmoid(logits) if multilabel else logits.softmax(-1)
            p, i = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)
            rows = [{"key": k, "classes": c.tolist(), "probs": [round(v, 6) for v in q.tolist()]}
                    for k, c, q in zip(keys, i, p)]
        for row in rows:
            self._file.write(json.dumps(row) + "\n")
