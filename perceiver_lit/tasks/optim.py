"""Optimizers and learning-rate schedules of the Perceiver papers.

- `Lamb`: LAMB (You, Li et al. 2019, "Large Batch Optimization for Deep Learning", Algorithm 2), the optimizer of
  both Perceiver papers. Written here because no maintained LAMB ships with the stack (torch has none; timm and
  torch-optimizer would be new dependencies for one class).
- `param_groups`: two groups, with and without weight decay, from the model's `no_weight_decay()` names.
- `LRSchedule`: the per-step multiplier of the base lr: linear warm-up, then constant, step decay (Perceiver:
  lr/10 at epochs 84, 102, 114 of 120) or constant-then-cosine (Perceiver IO: flat 55 of 110 epochs, cosine to 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam moments with bias correction, decoupled weight decay inside the update, and a per-tensor trust ratio.

    For each parameter tensor w with gradient g at step t:
        m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
        r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
        u = r + weight_decay * w
        trust = ||w|| / ||u||            (1.0 when either norm is 0, as in optax.lamb / DeepMind's code)
        w = w - lr * trust * u
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"Lamb: lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Lamb: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            params, updates = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt_().add_(group["eps"]))
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])
                params.append(p)
                updates.append(update)
            if not params:
                continue
            # All the group's norms at once: under FSDP2 one all-reduce, not two collectives per tensor.
            w_norms, u_norms = _global_norms(params + updates).split(len(params))
            trust = torch.where((w_norms > 0) & (u_norms > 0), w_norms / u_norms, torch.ones_like(w_norms))
            for p, update, tr in zip(params, updates, trust):  # tr stays on the device: no host sync
                p.add_(update * tr.to(update.dtype), alpha=-group["lr"])
        return loss


def _global_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each whole tensor, (len(tensors),), in at least fp32 (bf16 parameters: fp32 norms). A DTensor
    sharded over mesh dimensions (FSDP2's parameters and what is computed from them) counts all its shards: the
    local squared norms are summed over those dimensions in one all-reduce per (mesh, dimensions), instead of one
    per tensor."""
    from torch.distributed.tensor import DTensor

    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    dtypes = [torch.promote_types(t.dtype, torch.float32) for t in local]
    dtype = dtypes[0]
    for d in dtypes[1:]:
        dtype = torch.promote_types(dtype, d)
    device = local[0].device
    sq = torch.stack([torch.linalg.vector_norm(t, dtype=d).to(device, dtype) for t, d in zip(local, dtypes)]).square()
    sharded: dict[tuple, tuple[object, tuple[int, ...], list[int]]] = {}
    for i, t in enumerate(tensors):
        if isinstance(t, DTensor):
            dims = tuple(d for d, placement in enumerate(t.placements) if placement.is_shard())
            if dims:
                sharded.setdefault((id(t.device_mesh), dims), (t.device_mesh, dims, []))[2].append(i)
    for mesh, dims, idx in sharded.values():
        index = torch.tensor(idx, device=sq.device)
        part = sq[index]
        for d in dims:
            torch.distributed.all_reduce(part, group=mesh.get_group(d))
        sq[index] = part
    return sq.sqrt()


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    """Split parameters into a decayed and a non-decayed group.

    Names in `model.no_weight_decay()` (the models' contract: latents, position and query embeddings, norms,
    biases) take no decay. A model without that method falls back to: biases, norm weights and every 1-D tensor.
    A name in `no_weight_decay()` may also be a prefix of parameter names (e.g. "latents" or "adapter.pos").

    decay_embeddings: decay the latent, position and query arrays too, and spare only the 1-D tensors (biases
    and norms). That is DeepMind's ImageNet setting (`decay_pos_embs=True`: the latents and the output query are
    Haiku position encodings, and only biases and norm parameters are excluded), and PAPER.md's "not on biases
    or norms"; timm and nanoGPT spare embeddings, which is the default here.
    """
    explicit: set[str] | None = None
    if hasattr(model, "no_weight_decay") and callable(model.no_weight_decay):
        explicit = set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if explicit is not None:
            skip = name in explicit or any(name.startswith(e + ".") for e in explicit)
            skip = skip and not (decay_embeddings and p.ndim >= 2)
        else:
            skip = p.ndim <= 1 or name.endswith(".bias") or "norm" in name.lower()
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def can_fuse(params: Sequence[torch.Tensor]) -> bool:
    """torch's fused AdamW applies: plain float tensors (not FSDP2's DTensors) all on CPU or all on CUDA."""
    from torch.distributed.tensor import DTensor

    devices = {p.device.type for p in params}
    return (
        len(devices) == 1
        and devices <= {"cpu", "cuda"}
        and all(p.is_floating_point() for p in params)
        and not any(isinstance(p, DTensor) for p in params)
    )


def fused_adamw_allowed(precision_plugin: object, gradient_clip_val: float | None) -> bool:
    """Whether torch's fused AdamW may run under this Lightning precision plugin and gradient clipping.

    A fused AdamW unscales AMP gradients inside its step (`_step_supports_amp_scaling`), which Lightning allows only
    where nothing needs the unscaled gradients before the step:
    - a gradient scaler (16-mixed, classic FSDP's 16-mixed) must unscale before `GradNorm`, the NaN guard and
      clipping read the gradients: never fused;
    - Lightning's `MixedPrecision` plugin (16-mixed and bf16-mixed, also under DDP and FSDP2) refuses gradient
      clipping with such an optimizer even under bf16, where there is no scaler ("does not allow for gradient
      clipping because it performs unscaling of gradients internally"): not fused when clipping;
    - every other plugin (32-true, bf16-true, 16-true) steps and clips like fp32: fused.

    Args:
        precision_plugin: the trainer's `precision_plugin`.
        gradient_clip_val: the trainer's `gradient_clip_val` (None or 0: no clipping).
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    if getattr(precision_plugin, "scaler", None) is not None:
        return False
    return not (isinstance(precision_plugin, MixedPrecision) and gradient_clip_val)


def build_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: Sequence[float],
    eps: float,
    fused: bool = False,
    decay_embeddings: bool = False,
) -> torch.optim.Optimizer:
    """AdamW or LAMB over `param_groups`. fused: torch's single-kernel AdamW where `can_fuse` allows it (same
    update; measured 5-10% of the quickstart's CPU step); the task passes `fused_adamw_allowed` (off under a
    gradient scaler, and under AMP with clipping, which Lightning refuses with optimizers that unscale internally).
    decay_embeddings: see `param_groups`."""
    groups = param_groups(model, weight_decay, decay_embeddings)
    if name == "adamw":
        fused = fused and can_fuse([p for g in groups for p in g["params"]])
        return torch.optim.AdamW(
            groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=fused or None
        )
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    raise ValueError(f"model.init_args.optimizer: expected 'adamw' or 'lamb', got {name!r}")


class LRSchedule:
    """Multiplier of the base lr at optimizer step `step` (0-based). A plain object so LambdaLR checkpoints it.

    kind: "constant"; "step": multiply by `decay_factor` at each of `decay_steps`; "cosine": constant for
    `flat_steps`, then half a cosine from 1 to 0 at `total_steps`. A linear warm-up over `warmup_steps` multiplies
    any of them (the papers use none: Perceiver IO reports that a warm-up hurt).
    """

    def __init__(
        self,
        kind: str,
        total_steps: int | None = None,
        warmup_steps: int = 0,
        decay_steps: Sequence[int] = (),
        decay_factor: float = 0.1,
        flat_steps: int = 0,
    ) -> None:
        if kind not in ("constant", "step", "cosine"):
            raise ValueError(f"model.init_args.schedule: expected constant, step or cosine, got {kind!r}")
        if kind == "cosine" and not total_steps:
            raise ValueError("schedule 'cosine' needs the total number of steps (trainer.max_epochs or max_steps)")
        self.kind = kind
        self.total_steps = total_steps
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = sorted(int(s) for s in decay_steps)
        self.decay_factor = decay_factor
        self.flat_steps = int(flat_steps)

    def __call__(self, step: int) -> float:
        factor = 1.0
        if self.kind == "step":
            factor = self.decay_factor ** sum(step >= s for s in self.decay_steps)
        elif self.kind == "cosine" and step >= self.flat_steps:
            span = max(1, self.total_steps - self.flat_steps)
            progress = min(1.0, (step - self.flat_steps) / span)
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        if step < self.warmup_steps:
            factor *= (step + 1) / self.warmup_steps
        return factor
