"""Initialisers: DeepMind's (Haiku) truncated normals for Linear weights, latent and query arrays."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


@torch.no_grad()
def trunc_normal_(t: Tensor, std: float) -> Tensor:
    """In place: N(0, std^2) truncated at +-2 std, by inverse-CDF sampling (one pass; torch's rejection loop
    takes seconds on large CPU tensors)."""
    bound = math.erf(2 / math.sqrt(2))
    return t.uniform_(-bound, bound).erfinv_().mul_(std * math.sqrt(2)).clamp_(-2 * std, 2 * std)


def init_linear_(module: nn.Module) -> None:
    """DeepMind's Haiku init for every Linear (VarianceScaling(1.0)): truncated normal cut at 2 std with
    variance 1/fan_in (0.8796 corrects the truncation's loss of variance); zero bias. Apply with model.apply."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, module.in_features**-0.5 / 0.87962566103423978)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_latents(num: int, dim: int) -> nn.Parameter:
    """Learned (num, dim) array, truncated normal std 0.02 cut at 2 std (DeepMind's initialiser)."""
    p = nn.Parameter(torch.empty(num, dim))
    trunc_normal_(p, std=0.02)
    return p
