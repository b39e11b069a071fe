"""The fit checks the CLI runs before any training step: the task's loss suits the data's labels (single- vs
multi-label), and the net runs on one zero sample shaped like `data.input_shape`, on the meta device (no memory, no
compute, so paper-scale models cost nothing); a failure names the model and data fields."""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_info


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
        raise ValueError(
            f"data ({type(data).__name__}) is multi-label (data.init_args.multilabel: true) but the task "
            "is Classification: use perceiver_lit.tasks.MultilabelClassification or set multilabel: false"
        )
    if multilabel is False and isinstance(model, MultilabelClassification):
        raise ValueError(
            f"the task is MultilabelClassification but data ({type(data).__name__}) is single-label: "
            "set data.init_args.multilabel: true or use perceiver_lit.tasks.Classification"
        )


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
    where = (
        f"model.init_args.net ({type(net).__name__}) vs data ({type(data).__name__}, "
        f"input_shape={shape}, num_classes={getattr(data, 'num_classes', '?')})"
    )
    try:
        meta_net = copy.deepcopy(net).to("meta")
        with torch.no_grad():
            out = meta_net(_zeros_for(shape, dtype, "meta"))
    except NotImplementedError:  # an op without a meta kernel: nothing checked, say so
        rank_zero_info("[perceiver-lit] fast_check skipped: the model does not run on the meta device")
        return
    except Exception as e:  # noqa: BLE001 - any failure means the model does not fit the data
        raise ValueError(f"The model does not fit the data: {where}: {type(e).__name__}: {e}") from e
    classes = getattr(model, "num_classes", None)
    if isinstance(out, torch.Tensor) and classes is not None and out.shape[-1] != classes:
        raise ValueError(f"The model's output has {out.shape[-1]} classes, the task expects {classes}: {where}")
