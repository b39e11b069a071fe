"""The Python API for inference: a trained checkpoint predicts on files, with the preprocessing of its training.

    from perceiver_lit import load
    model = load("runs/x/checkpoints/best.ckpt")           # CPU, or device="cuda"
    model.predict(["a.jpg", "b.jpg"], top_k=3)              # [{"key", "classes", "names", "probs"}, ...]
    model = load("vision-perceiver-conv", data_config=...)  # a converted file or an HF folder: say the transforms

`load` rebuilds the task and its net from the checkpoint's hyperparameters (saved by `perceiver-lit fit`) and the
data module from the checkpoint's `datamodule_config` (the data config of the run, saved by perceiver-lit's
SaveDataConfig), so files go through exactly the eval transforms of training (resize, crop, normalisation, audio
features, point sampling, byte tokens). `predict` reads the files like `perceiver-lit predict
--data.init_args.predict_files ...` (unreadable files and files of another modality are skipped and counted, with
one warning each) and returns the same rows as its JSONL file (perceiver_lit/callbacks/predictions.py). Nothing
here imports W&B. The checkpoint is read with `torch.load(weights_only=True)`: nothing is unpickled.

A pretrained net that no `perceiver-lit fit` saved (a `perceiver-lit-convert` file or an HF folder) is rebuilt by
`perceiver_lit.models.pretrained` and wrapped in a Classification task; it records no data module, so `load` needs
`data_config` (the eval transforms its inputs must go through), and its class names come from the HF folder's
`id2label` when they are real names (HF writes LABEL_0... otherwise), or from `class_names`.
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


def _is_pretrained_net(path: str) -> bool:
    """An HF folder, or a file `perceiver-lit-convert` wrote (its "format" key), rather than a fit checkpoint."""
    from perceiver_lit.models.pretrained import CONVERTED_FORMAT

    if os.path.isdir(path):
        return True
    if not os.path.isfile(path):
        return False
    try:
        head = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - read_checkpoint names the problem
        return False
    return isinstance(head, dict) and head.get("format") == CONVERTED_FORMAT


def _hf_class_names(path: str) -> list[str] | None:
    """The HF folder's id2label when it holds real names (HF's default is LABEL_0, LABEL_1, ...)."""
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return None
    import json

    with open(config) as f:
        id2label = json.load(f).get("id2label") or {}
    names = [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]
    if not names or any(n is None for n in names) or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return [str(n) for n in names]


def pretrained_task(path: str, class_names: Sequence[str] | None = None) -> torch.nn.Module:
    """A Classification task around `perceiver_lit.models.pretrained(path)`, in eval mode."""
    from perceiver_lit.models import pretrained
    from perceiver_lit.tasks import Classification

    net = pretrained(path)
    names = list(class_names) if class_names is not None else (_hf_class_names(path) if os.path.isdir(path) else None)
    return Classification(net=net, class_names=names).eval()


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
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    data_config: dict[str, Any] | None = None,
    class_names: Sequence[str] | None = None,
) -> Predictor:
    """Load a `perceiver-lit fit` checkpoint, a `perceiver-lit-convert` file or an HF folder for inference.

    Args:
        path: the .ckpt file (e.g. runs/x/checkpoints/best.ckpt), a converted file, or an HF model folder.
        device: "cpu", "cuda", ...; default: CUDA when available, else CPU.
        data_config: the data module's {"class_path", "init_args"}: required for a converted file or an HF folder
            (they record no data module), and for a checkpoint that does not carry it.
        class_names: the names of the output classes, for a pretrained net whose file has none.
    """
    path = os.fspath(path)
    if _is_pretrained_net(path):
        if data_config is None:
            raise CheckpointError(
                f"{path}: a pretrained net (converted file or HF folder) records no data module: pass "
                "data_config={'class_path': ..., 'init_args': {...}}, the data module whose eval transforms its "
                "inputs must go through (e.g. datamodules.image.ImageDataModule with image_size 224)"
            )
        task = pretrained_task(path, class_names)
        cfg = data_config
    else:
        ckpt = read_checkpoint(path)
        cfg = data_config if data_config is not None else saved_data_config(ckpt, path)
        task = build_task(ckpt, path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return Predictor(task, cfg, device)
