"""MixUp and CutMix on a batch (the Perceiver IO ImageNet recipe: both, alpha 0.2, one of them per batch).

Works on the batch dict's channels-last inputs: images (B, H, W, C), and for MixUp any tensor or dict of tensors.
Targets become soft: lam * onehot(y) + (1 - lam) * onehot(y[perm]).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def _mix_tensors(x: Any, perm: torch.Tensor, lam: float) -> Any:
    if isinstance(x, dict):
        return {k: _mix_tensors(v, perm, lam) for k, v in x.items()}
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam)


def _cutmix_image(x: torch.Tensor, perm: torch.Tensor, lam: float, gen: torch.Generator | None) -> tuple[torch.Tensor, float]:
    """Paste a box from x[perm] into x (B, H, W, C); returns the inputs and lam corrected to the box's real area."""
    _, h, w, _ = x.shape
    cut = (1.0 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,), generator=gen))
    cx = int(torch.randint(w, (1,), generator=gen))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
    return x, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


class MixUpCutMix:
    """Apply MixUp (alpha `mixup_alpha`) or CutMix (alpha `cutmix_alpha`) with probability `prob`; when both are
    on, each batch picks one with probability `switch_prob` for CutMix (timm's convention)."""

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5) -> None:
        self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob = mixup_alpha, cutmix_alpha, prob, switch_prob

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, inputs: Any, target: torch.Tensor, num_classes: int,
                 gen: torch.Generator | None = None) -> tuple[Any, torch.Tensor]:
        """inputs, int64 target (B,) -> mixed inputs, float soft target (B, num_classes)."""
        soft = F.one_hot(target, num_classes).float() if target.ndim == 1 else target.float()
        if not self.enabled or float(torch.rand((), generator=gen)) >= self.prob:
            return inputs, soft
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or float(torch.rand((), generator=gen)) < self.switch_prob
        )
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(soft.shape[0], generator=gen).to(soft.device)
        if use_cutmix and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            inputs, lam = _cutmix_image(inputs, perm, lam, gen)
        else:  # MixUp (also CutMix's fallback for non-image inputs)
            inputs = _mix_tensors(inputs, perm, lam)
        return inputs, soft.mul(lam).add_(soft[perm], alpha=1.0 - lam)
