"""FlowImages: log `val/flow` to W&B: for a few samples of the first validation batch, one image
[frame 1 | frame 2 | true flow | predicted flow], the flows in the Middlebury colour wheel on the same scale (the true
flow's largest valid length), invalid pixels black. The OpticalFlow task adds it itself (`configure_callbacks`) and
hands it the batch's prediction (its validation_step returns `{"flow": (B, H, W, 2)}`). Rank 0 only, no collective;
a no-op (one info line) without a WandbLogger.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from perceiver_lit.callbacks.media_schedule import logs_media_now
from perceiver_lit.flow_viz import flow_to_color, frame_to_uint8

MIN_HEIGHT = 128  # small frames are enlarged (nearest neighbour) so the panels can be read on the dashboard


def flow_panel(
    frames: np.ndarray, target: np.ndarray | None, pred: np.ndarray, valid: np.ndarray | None = None, gap: int = 2
) -> np.ndarray:
    """One sample as an RGB strip (h, 4w + 3 gap, 3) uint8: the two frames (2, H, W, 3) in [-1, 1], the true flow
    and the prediction (H, W, 2) in colour (without a target: the frames and the prediction)."""
    scale = None
    if target is not None:
        ok = np.isfinite(target).all(-1) & (valid if valid is not None else True)
        scale = float(np.linalg.norm(np.where(ok[..., None], target, 0), axis=-1).max()) if ok.any() else None
    panels = [frame_to_uint8(frames[0]), frame_to_uint8(frames[1])]
    if target is not None:
        panels.append(flow_to_color(target, valid, scale))
    panels.append(flow_to_color(pred, None, scale))
    H = panels[0].shape[0]
    white = np.full((H, gap, 3), 255, np.uint8)
    strip = np.concatenate([p for panel in panels for p in (panel, white)][:-1], axis=1)
    k = max(1, -(-MIN_HEIGHT // H))
    return strip.repeat(k, 0).repeat(k, 1) if k > 1 else strip


class FlowImages(pl.Callback):
    """Args:
    num_samples: samples of the first validation batch to draw.
    every_n_epochs: log on validation epochs divisible by this.
    """

    def __init__(self, num_samples: int = 4, every_n_epochs: int = 1) -> None:
        self.num_samples, self.every_n_epochs = num_samples, every_n_epochs
        self._logger: WandbLogger | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if self._logger is None and stage == "fit":
            rank_zero_info("FlowImages: no WandbLogger attached; flow images are not logged")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (
            self._logger is None
            or not logs_media_now(trainer, batch_idx, dataloader_idx, self.every_n_epochs)
            or not isinstance(outputs, dict)
            or not isinstance(outputs.get("flow"), Tensor)
        ):
            return
        n = min(self.num_samples, len(outputs["flow"]))
        pred = outputs["flow"][:n].float().cpu().numpy()
        frames = batch["inputs"][:n].float().cpu().numpy()
        target = batch["target"][:n].float().cpu().numpy() if isinstance(batch.get("target"), Tensor) else None
        valid = batch["valid"][:n].cpu().numpy().astype(bool) if isinstance(batch.get("valid"), Tensor) else None
        keys = list(batch.get("key") or [])
        images, captions = [], []
        for s in range(n):
            v = None if valid is None else valid[s]
            t = None if target is None else target[s]
            images.append(flow_panel(frames[s], t, pred[s], v))
            caption = f"epoch {trainer.current_epoch}" + (f", {keys[s]}" if s < len(keys) else "")
            if t is not None:
                ok = np.isfinite(t).all(-1) & (v if v is not None else True)
                epe = np.linalg.norm(pred[s] - np.where(ok[..., None], t, 0), axis=-1)[ok]
                caption += f", EPE {epe.mean():.3f} px" if epe.size else ""
            captions.append(caption + " (frame 1 | frame 2 | true | predicted)" if t is not None else caption)
        self._logger.log_image("val/flow", images, step=trainer.global_step, caption=captions)
