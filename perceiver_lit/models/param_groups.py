"""Which parameters of a model take no weight decay (`no_weight_decay()` of every Perceiver model)."""

from __future__ import annotations

from torch import nn

from .position import LearnedPositionEncoding
from .queries import TrainableQueries


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Latents, position / query / modality embeddings, norms and biases: every parameter of ndim < 2,
    plus learned position tables, query arrays and latent arrays."""
    names = {n for n, p in model.named_parameters() if p.ndim < 2 or n.split(".")[-1] == "latents"}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (LearnedPositionEncoding, TrainableQueries)):
            names |= {f"{mod_name}.{n}" if mod_name else n for n, _ in mod.named_parameters()}
    return names
