"""PredictionWriter: `perceiver-lit predict` writes `<run dir>/predictions-rank<r>.jsonl`, one JSON line per sample.

The fields of a line (docs/training.md, "Predictions"):

- single-label (B, C) logits: `key`, `classes` (top-k class indices, most probable first), `names` (their class
  names, when the task or the data knows them), `probs` (softmax probabilities), and `label` (the true class
  index) when the sample has one.
- multi-label (B, C) logits: `key`, `classes` / `names` / `probs` of every class whose sigmoid probability is at
  least `threshold`, most probable first; for a labelled sample also `label` (its class indices) and `scores`
  (all C probabilities, so mAP can be computed from the file alone).
- masked byte modelling (B, L, V) logits: `key`, `text` (the input with its [MASK] positions filled in by the
  model's most likely bytes, or, when the input has no mask, the model's reconstruction of every byte, decoded
  as UTF-8 with invalid sequences replaced), `filled` (how many positions were filled).
- multimodal autoencoding: the single-label fields for the predicted label (the label input masked), plus
  `video` and `audio`: the paths of the sample's reconstructions, `<run dir>/predictions/<key>.mp4` and `.wav`
  (callbacks/reconstructions.py).

- dense outputs (a task with `write_predictions`, e.g. OpticalFlow): the task writes each sample's files under
  `<run dir>/predictions/` (flow: `flow/<key>.npy` and a colour-wheel `flow/<key>.png`); the line holds `key` and
  their paths relative to the run directory (and `epe` when the sample has its true flow).

One file per rank, so nothing is gathered across processes; `perceiver-lit-predictions merge RUN` joins them.
`prediction_rows` is shared with the Python API (`perceiver_lit.load(...).predict`), so both give the same rows.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

# the byte tokenizer's layout (datamodules/transforms/text.py, HF Perceiver): ids below 6 are special tokens
_MASK, _BYTE_OFFSET = 3, 6


def _round(values: Sequence[float]) -> list[float]:
    return [round(float(v), 6) for v in values]


def _text_rows(logits: torch.Tensor, keys: Sequence[Any], inputs: torch.Tensor | None) -> list[dict[str, Any]]:
    pred = logits.argmax(-1)  # (B, L)
    rows = []
    for b, key in enumerate(keys):
        ids = pred[b]
        if inputs is not None and inputs.shape == pred.shape:
            x = inputs[b].to(ids.device)
            fill = x == _MASK
            if not bool(fill.any()):  # nothing masked: the model's reconstruction of the byte positions
                fill = x >= _BYTE_OFFSET
            ids = torch.where(fill, ids, x)
            filled = int(fill.sum())
        else:
            filled = int((ids >= _BYTE_OFFSET).sum())
        data = bytes(int(i) - _BYTE_OFFSET for i in ids.tolist() if _BYTE_OFFSET <= i < _BYTE_OFFSET + 256)
        rows.append({"key": key, "text": data.decode("utf-8", errors="replace"), "filled": filled})
    return rows


def prediction_rows(
    logits: torch.Tensor,
    keys: Sequence[Any] | None = None,
    *,
    multilabel: bool = False,
    class_names: Sequence[str] | None = None,
    top_k: int = 5,
    threshold: float = 0.5,
    target: torch.Tensor | None = None,
    inputs: Any = None,
) -> list[dict[str, Any]]:
    """One JSON-ready dict per sample (the fields are in the module docstring).

    Args:
        logits: (B, C) class logits or (B, L, V) token logits.
        keys: the samples' keys (default: None each).
        multilabel: sigmoid + `threshold` instead of softmax + `top_k`.
        class_names: names by class index; None: no `names` field.
        target: the batch's targets: int64 (B,) (-1: unlabelled) or float (B, C) multi-hot (all -1: unlabelled).
        inputs: the batch's inputs; token ids (B, L) give masked byte modelling the positions to fill.
    """
    logits = logits.detach().float().cpu()
    keys = list(keys) if keys is not None else [None] * len(logits)
    if logits.ndim == 3:
        return _text_rows(logits, keys, inputs.detach().cpu() if isinstance(inputs, torch.Tensor) else None)
    names = list(class_names) if class_names else None
    target = target.detach().cpu() if isinstance(target, torch.Tensor) else None
    rows = []
    if multilabel:
        probs = torch.sigmoid(logits)  # (B, C)
        for b, key in enumerate(keys):
            p, i = probs[b].sort(descending=True)
            keep = p >= threshold
            row: dict[str, Any] = {"key": key, "classes": i[keep].tolist()}
            if names:
                row["names"] = [names[c] for c in row["classes"]]
            row["probs"] = _round(p[keep].tolist())
            if target is not None and target.ndim == 2 and bool((target[b] >= 0).all()):
                row["label"] = target[b].nonzero().flatten().tolist()
                row["scores"] = _round(probs[b].tolist())
            rows.append(row)
        return rows
    probs = logits.softmax(-1)  # (B, C)
    p, i = probs.topk(min(top_k, probs.shape[-1]), dim=-1)  # (B, k)
    for b, key in enumerate(keys):
        row = {"key": key, "classes": i[b].tolist()}
        if names:
            row["names"] = [names[c] for c in row["classes"]]
        row["probs"] = _round(p[b].tolist())
        if target is not None and target.ndim == 1 and int(target[b]) >= 0:
            row["label"] = int(target[b])
        rows.append(row)
    return rows


def is_multilabel(pl_module: pl.LightningModule) -> bool:
    """Multi-label tasks (sigmoid outputs) are the Multilabel* tasks."""
    return type(pl_module).__name__.startswith("Multilabel")


class PredictionWriter(BasePredictionWriter):
    """Args:
    top_k: classes written per sample for single-label classification.
    threshold: multi-label outputs list every class with sigmoid probability >= threshold.
    """

    def __init__(self, top_k: int = 5, threshold: float = 0.5) -> None:
        super().__init__(write_interval="batch")
        if top_k < 1:
            raise ValueError(f"prediction.top_k must be >= 1, got {top_k}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"prediction.threshold must be in [0, 1], got {threshold}")
        self.top_k, self.threshold = top_k, threshold
        self._file = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        os.makedirs(trainer.default_root_dir, exist_ok=True)
        self.path = os.path.join(trainer.default_root_dir, f"predictions-rank{trainer.global_rank}.jsonl")
        self._file = open(self.path, "w", encoding="utf-8")
        dm = getattr(trainer, "datamodule", None)
        # the model's names (from its checkpoint) first: they are what it was trained with
        self._names = getattr(pl_module, "class_names", None) or getattr(dm, "class_names", None)
        self._multilabel = is_multilabel(pl_module)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        batch = batch if isinstance(batch, dict) else {}
        dense = getattr(pl_module, "write_predictions", None)
        if dense is not None:  # dense outputs (flow): the task writes its files under <run dir>/predictions/
            for row in dense(prediction, batch, os.path.join(trainer.default_root_dir, "predictions")):
                self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        rows = prediction_rows(
            prediction["logits"],
            prediction.get("key"),
            multilabel=self._multilabel,
            class_names=self._names,
            top_k=self.top_k,
            threshold=self.threshold,
            target=batch.get("target"),
            inputs=batch.get("inputs"),
        )
        if "video" in prediction and "audio" in prediction:  # multimodal autoencoding: reconstructions as media
            from perceiver_lit.callbacks.reconstructions import media_rates, write_reconstructions

            write_reconstructions(
                os.path.join(trainer.default_root_dir, "predictions"), prediction, rows, *media_rates(trainer)
            )
        for row in rows:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")


class SaveDataConfig(pl.Callback):
    """Put the data module's config (`{"class_path", "init_args"}`, as the CLI resolved it) into every checkpoint
    under `datamodule_config`, so `perceiver_lit.load` can rebuild its eval transforms exactly."""

    KEY = "datamodule_config"

    def __init__(self, config: dict[str, Any] | None) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.config:
            checkpoint[self.KEY] = self.config
