"""The Python API for inference: a trained checkpoint predicts on files, with the preprocessing of its training.

    from perceiver_lit import load
    model = load("runs/x/checkpoints/best.ckpt")           # CPU, or device="cuda"
    model.predict(["a.jpg", "b.jpg"], top_k=3)              # [{"key", "classes", "names", "probs"}, ...]

`load` rebuilds the task and its net from the checkpoint's hyperparameters (saved by `perceiver-lit fit`) and the
data module from the checkpoint's `datamodule_config` (the data config of the run, saved by perceiver-lit's
SaveDataConfig), so files go through exactly the eval transforms of training (resize, crop, normalisation, audio
features, point sampling, byte tokens). `predict` reads the files like `perceiver-lit predict
--data.init_args.predict_files ...` (unreadable files and files of another modality are skipped and counted, with
one warning each) and returns the same rows as its JSONL file (perceiver_lit/callbacks/predictions.py). Nothing
here imports W&B. The checkpoint is read with `torch.load(weights_only=True)`: nothing is unpickled.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

import torch

DATA_KEY = "datamodule_config"  # perceiver_lit.callbacks.predictions.SaveDataConfig.KEY


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded for inference; the message names the file and what is missing."""


def _import(class_path: str, what: str, path: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot import the {what} {class_path!r}: {e}") from e


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, loaded with weights_only=True; a CheckpointError naming the file if it is not one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, or a pickled object we refuse to run
        raise CheckpointError(
            f"{path}: not a loadable checkpoint (torch.load weights_only=True): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return ckpt


def build_task(ckpt: dict[str, Any], path: str) -> torch.nn.Module:
    """The task (LightningModule) with its net, from the checkpoint's hyperparameters and weights."""
    from lightning.pytorch.cli import instantiate_module

    hp = ckpt.get("hyper_parameters") or {}
    if "_class_path" not in hp or not isinstance(hp.get("net"), dict) or "class_path" not in hp["net"]:
        missing = (
            "hyper_parameters['_class_path']"
            if "_class_path" not in hp
            else "hyper_parameters['net'] (a {class_path, init_args} config)"
        )
        raise CheckpointError(
            f"{path}: the checkpoint has no {missing}: it was not saved by `perceiver-lit fit`, "
            "so the model cannot be rebuilt from it"
        )
    task_cls = _import(hp["_class_path"], "task", path)
    config = {k: v for k, v in hp.items() if k != "_instantiator"}
    task = instantiate_module(task_cls, config)
    task.load_state_dict(ckpt["state_dict"])
    if hp.get("class_names") and getattr(task, "class_names", None) is None:
        task.class_names = list(hp["class_names"])
    return task.eval()


def saved_data_config(ckpt: dict[str, Any], path: str) -> dict[str, Any]:
    """The data module config ({"class_path", "init_args"}) saved in the checkpoint."""
    cfg = ckpt.get(DATA_KEY)
    if not isinstance(cfg, dict) or "class_path" not in cfg:
        raise CheckpointError(
            f"{path}: the checkpoint has no '{DATA_KEY}' (the data module's class_path and "
            "init_args, which give the eval transforms): it was saved before perceiver-lit kept it "
            "or not by `perceiver-lit fit`; pass data_config={'class_path': ..., 'init_args': {...}} "
            "(the `data:` section of the run's config.yaml) to load()"
        )
    return cfg


class Predictor:
    """A loaded checkpoint: `predict(files)` -> rows; `task`, `net`, `class_names`, `data_config` as loaded.

    Args:
        task: the task (LightningModule) in eval mode.
        data_config: {"class_path", "init_args"} of the run's data module.
        device: where the net runs.
    """

    def __init__(self, task: torch.nn.Module, data_config: dict[str, Any], device: str | torch.device = "cpu"):
        self.task, self.data_config = task, data_config
        self.device = torch.device(device)
        self.task.to(self.device)
        self.net = task.net
        self.class_names: list[str] | None = getattr(task, "class_names", None)
        self.multilabel = type(task).__name__.startswith("Multilabel")

    def datamodule(self, files: str | Sequence[str], batch_size: int = 32) -> Any:
        """The run's data module reading `files` (predict_files), no shards, in this process (in file order)."""
        cls = _import(self.data_config["class_path"], "data module", "data_config")
        init = dict(self.data_config.get("init_args") or {})
        for key in ("train_urls", "val_urls", "test_urls", "predict_urls"):
            init[key] = None
        init.update(predict_files=files, batch_size=batch_size, num_workers=0, pin_memory=False, samples_per_epoch=None)
        if "class_names" in init and self.class_names:
            init["class_names"] = self.class_names
        return cls(**init)

    @torch.inference_mode()
    def predict(
        self, files: str | Sequence[str], top_k: int = 5, threshold: float = 0.5, batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """Predict on image/audio/video/point-cloud/text files: a glob, a folder, a list file, or a list of paths.

        Args:
            top_k: classes per sample (single-label).
            threshold: multi-label: every class with probability >= threshold.
            batch_size: samples per forward pass.
        Returns: one dict per readable sample, in file order, with the fields of `perceiver-lit predict`'s JSONL
            (`key`, `classes`, `names`, `probs`, ...; docs/training.md).
        """
        from perceiver_lit.callbacks.predictions import prediction_rows

        files = [os.fspath(f) for f in files] if not isinstance(files, (str, os.PathLike)) else os.fspath(files)
        dm = self.datamodule(files, batch_size)
        rows: list[dict[str, Any]] = []
        for batch in dm.predict_dataloader():
            inputs = _to(batch["inputs"], self.device)
            pad_mask = batch.get("pad_mask")
            logits = self.task(inputs, None if pad_mask is None else pad_mask.to(self.device))
            rows += prediction_rows(
                logits,
                batch["key"],
                multilabel=self.multilabel,
                class_names=self.class_names,
                top_k=top_k,
                threshold=threshold,
                target=batch.get("target"),
                inputs=batch["inputs"],
            )
        return rows


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x.to(device)


def load(
    path: str | os.PathLike, device: str | torch.device | None = None, data_config: dict[str, Any] | None = None
) -> Predictor:
    """Load a `perceiver-lit fit` checkpoint for inference.

    Args:
        path: the .ckpt file (e.g. runs/x/checkpoints/best.ckpt).
        device: "cpu", "cuda", ...; default: CUDA when available, else CPU.
        data_config: the data module's {"class_path", "init_args"}, for a checkpoint that does not carry it.
    """
    path = os.fspath(path)
    ckpt = read_checkpoint(path)
    cfg = data_config if data_config is not None else saved_data_config(ckpt, path)
    task = build_task(ckpt, path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Predictor(task, cfg, device)
