"""Reconstruction metrics as torchmetrics `Metric`s (DDP-correct: their states are sums, all-reduced at compute).

- `PSNR`: peak signal-to-noise ratio over a whole evaluation set, `10 log10(R^2 / MSE)` with R the signal's data
  range (max - min of what the signal can be) and MSE the mean squared error over every element of every sample
  seen (not a mean of per-sample PSNRs). Predictions are clamped to the range first, as a saved image or wav is.
- `RunningMean`: the element-wise mean of the samples seen (e.g. the training set's mean clip), for the mean-frame
  and mean-clip baselines (tasks/autoencoding.py, docs/training.md "Multimodal autoencoding").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


class PSNR(Metric):
    """PSNR in dB over everything seen: 10 log10(data_range^2 / (sum of squared errors / number of elements)).

    Args:
        data_range: R, the signal's range max - min (video pixels in [0, 1]: 1.0; a waveform in [-1, 1]: 2.0).
        clamp: (low, high) to clamp predictions to before the error; None: no clamping.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, data_range: float, clamp: Sequence[float] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if data_range <= 0:
            raise ValueError(f"PSNR: data_range must be > 0, got {data_range}")
        self.data_range = float(data_range)
        self.clamp = tuple(float(c) for c in clamp) if clamp is not None else None
        self.add_state("sse", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        preds, target = preds.detach().double(), target.detach().double()
        if preds.shape != target.shape:
            raise ValueError(f"PSNR: preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        if self.clamp is not None:
            preds = preds.clamp(*self.clamp)
        self.sse += ((preds - target) ** 2).sum()
        self.count += target.numel()

    def compute(self) -> Tensor:
        mse = self.sse / self.count.clamp(min=1)
        return (10 * torch.log10(self.data_range**2 / mse)).float()  # inf when exact


class RunningMean(Metric):
    """The element-wise mean of the samples seen: update(x (B, *shape)) -> compute() (*shape).

    Args:
        shape: the per-sample shape.
    """

    full_state_update = False

    def __init__(self, shape: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.shape = tuple(int(s) for s in shape)
        self.add_state("total", default=torch.zeros(self.shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"RunningMean: samples of shape {tuple(x.shape[1:])}, expected {self.shape}")
        self.total += x.detach().double().sum(0)
        self.count += x.shape[0]

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp(min=1)).float()
