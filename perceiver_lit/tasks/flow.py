"""Optical flow: two frames in, a flow field (B, H, W, 2) in pixels out (Perceiver IO, Sec. 4.2).

Batch (datamodules/flow.py): `inputs` float32 (B, 2, H, W, 3) frames in [-1, 1]; `target` float32 (B, H, W, 2)
flow in pixels (u right, v down); `valid` bool (B, H, W), optional (KITTI's mask; absent: every pixel is valid);
`key` list[str].
"""

from __future__ import annotations

import inspect
import os
import re
from typing import Any, Literal

import torch
from torch import Tensor, nn

from perceiver_lit.models.decoders import random_query_indices, take_rows
from perceiver_lit.tasks.base import Task
from perceiver_lit.tasks.flow_metrics import EndPointError, FlOutliers, end_point_error

# DeepMind's FLOW_SCALE_FACTOR: their targets were flow / 20 (inherited from AutoFlow's RAFT training), and the
# official model's output times 20 is the flow in pixels (deepmind-research issue #266, the optical_flow colab).
FLOW_SCALE_FACTOR = 20.0


def _safe_name(key: Any) -> str:
    """A sample key as a file name: path separators and odd characters become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(key)).lstrip(".") or "sample"


class OpticalFlow(Task):
    """Batch `{"inputs": (B, 2, H, W, 3), "target": (B, H, W, 2), "valid": (B, H, W)}` -> flow (B, H, W, 2) px.

    Logs `train/loss`, `train/epe` (on the decoded subset), `val/loss`, `val/epe`, `val/fl_all`,
    `val/epe_zero_flow` (the EPE of predicting no motion: the baseline to beat) and the same under `test/`.
    `val/epe` picks the best checkpoint. Invalid pixels are left out of the loss and of every metric.

    Loss: DeepMind did not publish its flow training code (deepmind-research issue #281: AutoFlow's pipeline and
    curriculum with this model). AutoFlow trains RAFT with RAFT's loss, the L1 distance between predicted and true
    flow, on targets divided by FLOW_SCALE_FACTOR (issue #266), so `loss: l1` (the default) is that: the mean over
    valid pixels of |du| + |dv|, in units of pixels / flow_scale. `loss: epe` is the end-point error itself (the
    metric), in the same units. Perceiver IO predicts once (RAFT's sequence weighting has nothing to weigh).

    Args:
        net: a flow model: `net(frames) -> (B, H, W, 2)`, and `net(frames, query_indices=idx) -> (B, Q, 2)` to decode
            only some pixels (PerceiverIOFlow).
        loss: "l1" (AutoFlow / RAFT) or "epe".
        flow_scale: the net's output times this is flow in pixels (DeepMind's 20: the official weights predict flow
            / 20; the decoder's own rescale_factor 100 comes on top).
        train_queries: pixels decoded per sample in training: an int, a fraction (0, 1] of H x W, or None for all.
            Each step draws a new random subset (the paper's output subsampling); eval decodes every pixel, in
            the net's chunks.
        num_images: validation samples drawn as [frame 1 | frame 2 | true flow | predicted flow] to W&B each
            validation (`val/flow`); 0: none.
        **kwargs: optimizer and schedule, see `Task`.
    """

    monitor = ("val/epe", "min")
    #: no class count: the CLI links neither data.num_classes into this task nor into its net
    links_num_classes = False

    def __init__(
        self,
        net: nn.Module,
        loss: Literal["l1", "epe"] = "l1",
        flow_scale: float = FLOW_SCALE_FACTOR,
        train_queries: int | float | None = None,
        num_images: int = 4,
        **kwargs: Any,
    ) -> None:
        kwargs["num_classes"] = kwargs.get("num_classes") or 2  # the output channels (u, v)
        super().__init__(net, **kwargs)
        if loss not in ("l1", "epe"):
            raise ValueError(f"model.init_args.loss must be 'l1' or 'epe', got {loss!r}")
        if flow_scale <= 0:
            raise ValueError(f"model.init_args.flow_scale must be > 0, got {flow_scale}")
        if train_queries is not None and not (
            (isinstance(train_queries, int) and train_queries >= 1)
            or (isinstance(train_queries, float) and 0.0 < train_queries <= 1.0)
        ):
            raise ValueError(
                "model.init_args.train_queries must be an int >= 1 (pixels) or a float in (0, 1] "
                f"(a fraction of the pixels), or null; got {train_queries!r}"
            )
        config = getattr(net, "config", None)
        if getattr(config, "estimate_residual", False) and config.rescale_factor != flow_scale:
            raise ValueError(  # the net adds its estimate in pixels before rescale_factor divides
                f"model.init_args.net.init_args.rescale_factor ({config.rescale_factor}) must equal "
                f"model.init_args.flow_scale ({flow_scale}) with estimate_residual: the estimate is in pixels"
            )
        self.loss_name, self.flow_scale, self.train_queries = loss, float(flow_scale), train_queries
        self.num_images = num_images
        self._subsamples = "query_indices" in inspect.signature(net.forward).parameters
        if train_queries is not None and not self._subsamples:
            raise ValueError(
                f"model.init_args.train_queries: {type(net).__name__}.forward takes no query_indices, "
                "so it cannot decode a subset of pixels; set train_queries: null"
            )
        self.metrics = nn.ModuleDict(
            {
                f"{s}_metrics": nn.ModuleDict(
                    {"epe": EndPointError(), "fl_all": FlOutliers(), "epe_zero_flow": EndPointError()}
                )
                for s in ("val", "test")
            }
        )

    # ---- steps
    def predict_flow(self, frames: Tensor) -> Tensor:
        """Frames (B, 2, H, W, 3) -> flow (B, H, W, 2) in pixels, every pixel decoded."""
        return self.net(frames).float() * self.flow_scale

    def _num_train_queries(self, num_pixels: int) -> int | None:
        q = self.train_queries
        if q is None or not self._subsamples:
            return None
        n = round(q * num_pixels) if isinstance(q, float) else int(q)
        return None if n >= num_pixels else max(1, n)

    def _loss(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """Mean over valid pixels of the per-pixel loss, in units of pixels / flow_scale. pred, target (B, Q, 2)."""
        diff = (pred - torch.where(valid[..., None], target, torch.zeros((), device=target.device))) / self.flow_scale
        per_pixel = diff.abs().sum(-1) if self.loss_name == "l1" else torch.linalg.vector_norm(diff, dim=-1)
        # No branch on the count (a host-device sync every step); no valid pixel gives a zero loss with a graph.
        return (per_pixel * valid).sum() / valid.sum().clamp(min=1)

    def _step(self, batch: dict, stage: str) -> tuple[Tensor, Tensor]:
        frames, target = batch["inputs"], batch["target"].float()
        B, _, H, W, _ = frames.shape
        if tuple(target.shape) != (B, H, W, 2):
            raise ValueError(
                f"OpticalFlow: batch['target'] must be (B, H, W, 2) = {(B, H, W, 2)} for inputs "
                f"{tuple(frames.shape)}, got {tuple(target.shape)}"
            )
        valid = batch.get("valid")
        valid = torch.ones(B, H, W, dtype=torch.bool, device=frames.device) if valid is None else valid.bool()
        valid = valid & torch.isfinite(target).all(-1)
        n = self._num_train_queries(H * W) if stage == "train" else None
        if n is not None:
            idx = random_query_indices(H * W, n, B, device=frames.device)  # (B, Q)
            pred = self.net(frames, query_indices=idx).float() * self.flow_scale  # (B, Q, 2) pixels
            target_q = take_rows(target.flatten(1, 2), idx)  # (B, Q, 2)
            valid_q = take_rows(valid.flatten(1, 2)[..., None], idx)[..., 0]  # (B, Q)
        else:
            pred = self.predict_flow(frames)  # (B, H, W, 2)
            target_q, valid_q = target, valid
        loss = self._loss(pred.flatten(1, -2), target_q.flatten(1, -2), valid_q.flatten(1))
        self.log_loss(stage, loss, B)
        if stage == "train":
            with torch.no_grad():
                epe, ok = end_point_error(pred.detach(), target_q, valid_q)
                self.log("train/epe", epe.sum() / ok.sum().clamp(min=1), on_step=True, on_epoch=True, batch_size=B)
        elif f"{stage}_metrics" in self.metrics:
            metrics = self.metrics[f"{stage}_metrics"]
            p = pred.detach()
            metrics["epe"].update(p, target, valid)
            metrics["fl_all"].update(p, target, valid)
            metrics["epe_zero_flow"].update(torch.zeros_like(p), target, valid)
            for name, metric in metrics.items():
                self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "epe", batch_size=B)
        return loss, pred

    def shared_step(self, batch: dict, stage: str, batch_idx: int) -> Tensor:
        return self._step(batch, stage)[0]

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        # The prediction goes to callbacks (FlowImages draws the first batch's).
        return {"flow": self._step(batch, "val")[1].detach()}

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"key": batch.get("key"), "flow": self.predict_flow(batch["inputs"])}

    def configure_callbacks(self) -> list:
        from perceiver_lit.callbacks.flow_images import FlowImages

        return [FlowImages(num_samples=self.num_images)] if self.num_images > 0 else []

    # ---- `perceiver-lit predict` (callbacks/predictions.py calls this for its rows)
    def write_predictions(self, prediction: dict, batch: dict, out_dir: str) -> list[dict[str, Any]]:
        """Write each sample's flow as `<out_dir>/flow/<key>.npy` (float32 (H, W, 2), pixels) and `<key>.png` (the
        colour wheel); one row per sample: key, the two paths (relative to out_dir's parent, the run directory),
        and, when the batch has the true flow, that sample's `epe`."""
        import numpy as np

        from perceiver_lit.flow_viz import save_flow_png

        flow = prediction["flow"].detach().float().cpu()  # (B, H, W, 2)
        keys = prediction.get("key") or [f"sample{i}" for i in range(len(flow))]
        target, valid = batch.get("target"), batch.get("valid")
        folder = os.path.join(out_dir, "flow")
        os.makedirs(folder, exist_ok=True)
        run_dir = os.path.dirname(os.path.abspath(out_dir))
        rows = []
        for b, key in enumerate(keys):
            base = os.path.join(folder, _safe_name(key))
            f = flow[b].numpy().astype(np.float32)
            np.save(base + ".npy", f)
            save_flow_png(f, base + ".png")
            row: dict[str, Any] = {
                "key": key,
                "flow": os.path.relpath(base + ".npy", run_dir),
                "image": os.path.relpath(base + ".png", run_dir),
            }
            if isinstance(target, Tensor) and target.shape[1:3] == flow.shape[1:3]:
                v = valid[b].cpu() if isinstance(valid, Tensor) else None
                epe, ok = end_point_error(flow[b], target[b].detach().float().cpu(), v)
                if bool(ok.any()):
                    row["epe"] = round(float(epe.sum() / ok.sum()), 6)
            rows.append(row)
        return rows
