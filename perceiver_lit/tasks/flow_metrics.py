"""Optical flow metrics as torchmetrics `Metric`s whose states are sums, so DDP / FSDP ranks add up exactly.

- `EndPointError`: the average end-point error (EPE), ||pred - target||_2 in pixels, averaged over every valid pixel
  of the evaluated set (pixel-weighted, as Sintel's and RAFT's evaluation report it).
- `FlOutliers`: KITTI 2015's Fl, the fraction of valid pixels whose end-point error is both > 3 px and > 5% of the
  true flow's length (the KITTI devkit's `ABS_THRESH = 3`, `REL_THRESH = 0.05`), counted over all valid pixels of
  the set (the devkit sums outliers and valid pixels over the images). "Fl-all": over all valid pixels.

Both take `valid` (bool, KITTI's mask; None: every pixel) and ignore invalid pixels entirely (their flow may be
anything, NaN included).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

KITTI_ABS_THRESH, KITTI_REL_THRESH = 3.0, 0.05


def end_point_error(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(per-pixel EPE (...), validity (...) bool) for flow (..., 2); invalid pixels have EPE 0."""
    ok = torch.isfinite(target).all(-1)
    if valid is not None:
        ok = ok & valid.to(torch.bool)
    diff = pred.float() - torch.where(ok[..., None], target.float(), torch.zeros((), device=target.device))
    epe = torch.linalg.vector_norm(diff, dim=-1)
    return torch.where(ok, epe, torch.zeros((), device=epe.device)), ok


class EndPointError(Metric):
    """Average end-point error over the valid pixels seen: sum of EPE / number of valid pixels (pixels of flow).

    `update(pred, target, valid=None)`: flow (..., 2) in pixels, valid bool (...). No valid pixel: NaN.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        epe, ok = end_point_error(pred, target, valid)
        self.total += epe.sum(dtype=torch.float64)
        self.count += ok.sum()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        return self.total / self.count


class FlOutliers(Metric):
    """KITTI's Fl: the fraction of valid pixels with EPE > abs_thresh px and EPE > rel_thresh x |target|.

    `update(pred, target, valid=None)` as EndPointError. No valid pixel: NaN.

    Args:
        abs_thresh, rel_thresh: KITTI's 3 px and 5%. rel_thresh 0 gives the plain "> 3 px" fraction.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, abs_thresh: float = KITTI_ABS_THRESH, rel_thresh: float = KITTI_REL_THRESH, **kwargs) -> None:
        super().__init__(**kwargs)
        self.abs_thresh, self.rel_thresh = abs_thresh, rel_thresh
        self.add_state("outliers", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, valid: Tensor | None = None) -> None:
        epe, ok = end_point_error(pred, target, valid)
        mag = torch.linalg.vector_norm(
            torch.where(ok[..., None], target.float(), torch.zeros((), device=epe.device)), dim=-1
        )
        # KITTI: err > 3 && err / mag > 0.05, written without the division (mag 0 makes any err > 0 relative)
        out = ok & (epe > self.abs_thresh) & (epe > self.rel_thresh * mag)
        self.outliers += out.sum()
        self.count += ok.sum()

    def compute(self) -> Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=self.outliers.device)
        return self.outliers.double() / self.count
