"""MixUp and CutMix on a batch.

Two ways to combine them (`MixUpCutMix.mode`):
- "split" (DeepMind's Perceiver / Perceiver IO ImageNet code): the first half of every batch is MixUp'd and the
  second half CutMix'd, each sample with its own ratio: MixUp's from Beta(mixup_alpha, mixup_alpha), CutMix's box
  area from Beta(cutmix_alpha, cutmix_alpha), uniform at 1.0 as DeepMind draws it. DeepMind pairs two freshly
  loaded batches; here a sample's partner is another sample of the same batch (a random permutation), which
  mixes the same distribution of pairs without loading twice the data.
- "switch" (timm's convention): the whole batch gets one of the two, CutMix with probability `switch_prob`, with
  one ratio for the batch.

Works on the batch dict's channels-last inputs: images (B, H, W, C), and for MixUp any tensor or dict of tensors
(CutMix falls back to MixUp on inputs that are not images). Targets become soft: lam * onehot(y) + (1 - lam) *
onehot(y[perm]), lam per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F


def _beta(alpha: float, n: int, gen: torch.Generator | None) -> torch.Tensor:
    """n draws from Beta(alpha, alpha), (n,); with `gen`, reproducibly from it (torch's Beta sampler takes no
    generator, so it runs on a seed drawn from `gen`, leaving the global RNG as it was)."""
    dist = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    if gen is None:
        return dist.sample((n,))
    seed = int(torch.randint(2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dist.sample((n,))


def _mix_tensors(x: Any, perm: torch.Tensor, lam: torch.Tensor) -> Any:
    """x * lam + x[perm] * (1 - lam), lam (B,) broadcast over each tensor's trailing dims."""
    if isinstance(x, dict):
        return {k: _mix_tensors(v, perm, lam) for k, v in x.items()}
    w = lam.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return x * w + x[perm] * (1 - w)


def _cutmix_boxes(
    b: int, h: int, w: int, lam: torch.Tensor, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of b images (h, w), a box of area (1 - lam) of the image, centred uniformly and clipped at the
    borders: the mask of where the partner is pasted (B, H, W), and lam corrected to the area kept (B,)."""
    cut = (1.0 - lam).clamp(0, 1).sqrt()  # (B,) box side / image side
    ch, cw = (h * cut).long(), (w * cut).long()
    cy, cx = torch.randint(h, (b,), generator=gen), torch.randint(w, (b,), generator=gen)
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch // 2).clamp(0, h)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw // 2).clamp(0, w)
    rows, cols = torch.arange(h), torch.arange(w)
    inside = ((rows >= y0[:, None]) & (rows < y1[:, None]))[:, :, None] & (
        (cols >= x0[:, None]) & (cols < x1[:, None])
    )[:, None, :]  # (B, H, W)
    return inside, 1.0 - ((y1 - y0) * (x1 - x0)).float() / (h * w)


@dataclass(eq=False)
class MixUpCutMix:
    """MixUp (`mixup_alpha`) and / or CutMix (`cutmix_alpha`; 0 turns either off) on a training batch, applied
    with probability `prob`; `mode` "split" or "switch" combines the two (module docstring)."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: Literal["split", "switch"] = "switch"

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha / cutmix_alpha must be >= 0, got {self.mixup_alpha} / {self.cutmix_alpha}")
        if self.mode not in ("split", "switch"):
            raise ValueError(f"model.init_args.mix_mode: expected 'split' or 'switch', got {self.mode!r}")

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(
        self, inputs: Any, target: torch.Tensor, num_classes: int, gen: torch.Generator | None = None
    ) -> tuple[Any, torch.Tensor]:
        """inputs, int64 target (B,) (or soft (B, K)) -> mixed inputs, float soft target (B, num_classes)."""
        soft = F.one_hot(target, num_classes).float() if target.ndim == 1 else target.float()
        if not self.enabled or float(torch.rand((), generator=gen)) >= self.prob:
            return inputs, soft
        b = soft.shape[0]
        perm = torch.randperm(b, generator=gen)
        # Which samples get CutMix (the rest get MixUp).
        if self.mixup_alpha <= 0:
            cut = torch.ones(b, dtype=torch.bool)
        elif self.cutmix_alpha <= 0:
            cut = torch.zeros(b, dtype=torch.bool)
        elif self.mode == "split":
            cut = torch.arange(b) >= b // 2
        else:
            cut = torch.full((b,), float(torch.rand((), generator=gen)) < self.switch_prob)
        n = 1 if self.mode == "switch" else b  # ratios to draw: timm's switch uses one for the whole batch
        lam = torch.ones(b)
        if self.mixup_alpha > 0:
            lam = torch.where(cut, lam, _beta(self.mixup_alpha, n, gen).expand(b))
        if cut.any():
            lam_cut = _beta(self.cutmix_alpha, n, gen).expand(b)
            if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:  # images: one blend weight per pixel
                inside, kept = _cutmix_boxes(b, inputs.shape[1], inputs.shape[2], lam_cut, gen)
                lam = torch.where(cut, kept, lam)
                weight = torch.where(cut[:, None, None], ~inside, lam[:, None, None]).to(inputs.device, inputs.dtype)
                weight = weight[..., None]  # (B, H, W, 1): 1 own, 0 partner
                return inputs * weight + inputs[perm] * (1 - weight), _mix_tensors(soft, perm, lam)
            lam = torch.where(cut, lam_cut, lam)  # CutMix falls back to MixUp on inputs that are not images
        return _mix_tensors(inputs, perm, lam), _mix_tensors(soft, perm, lam)
