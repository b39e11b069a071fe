"""Perceiver (Jaegle et al. 2021): a latent array repeatedly cross-attends to the inputs, with a latent
Transformer after each cross-attend; classification from the mean latent.

Weight sharing as in the paper: cross-attends 2..n share one set of weights, the first has its own ("sharing
the initial cross-attention led to instability"); all latent Transformer blocks share one set of weights.
Either can be switched off (the paper's unshared ImageNet model has 326.2M parameters instead of 44.9M).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import Tensor, nn

from .adapters import InputAdapter
from .attention import CrossAttentionLayer, SelfAttentionBlock
from .checks import check_sizes
from .hparams import config_class, record, sizes
from .param_groups import no_weight_decay_names
from .weight_init import init_latents, init_linear_


def subsample_inputs(x: Tensor, pad_mask: Tensor | None, keep: float) -> tuple[Tensor, Tensor | None]:
    """A random subset of K = round(keep * M) input elements per sample: (B, M, C) -> (B, K, C), and the pad mask.

    Cross-attention is a softmax-weighted mean over the inputs, so a random subset of them estimates what the
    whole set gives: training on a fraction `keep` of the elements makes every cross-attend ~1/keep cheaper, and
    acts as a regulariser (cf. token dropping in FLIP, Li et al. 2023). Evaluation sees every element. Padded
    elements are drawn last, so a sample keeps its real elements whenever it has K of them.
    """
    B, M, C = x.shape
    k = max(1, round(keep * M))
    if k >= M:
        return x, pad_mask
    score = torch.rand(B, M, device=x.device)  # (B, M)
    if pad_mask is not None:
        score = score.masked_fill(pad_mask, 2.0)  # real elements first
    idx = score.topk(k, dim=1, largest=False, sorted=False).indices  # (B, K)
    x = x.gather(1, idx.unsqueeze(-1).expand(B, k, C))  # (B, K, C)
    return x, None if pad_mask is None else pad_mask.gather(1, idx)


class Perceiver(nn.Module):
    """adapter -> [cross-attend -> latent Transformer] x num_blocks -> mean over latents -> LayerNorm -> Linear.

    forward(inputs, pad_mask=None) -> (B, num_classes) logits. The defaults are the paper's ImageNet model.

    Args:
        adapter: turns a batch into (B, M, C) input elements (an InputAdapter, e.g. ImageAdapter).
        num_classes: output logits.
        num_latents: N, the rows of the learned latent array.
        latent_dim: D, the latents' channels.
        num_cross_attends: how many of the blocks start with a cross-attend to the inputs (the first blocks).
        num_blocks: latent Transformer blocks; null: one per cross-attend.
        num_self_attends_per_block: self-attention layers in each latent Transformer block.
        num_cross_attention_heads: heads of the cross-attention (paper: 1).
        num_self_attention_heads: heads of the latent self-attention (paper: 8).
        cross_attention_qk_channels: q/k width of the cross-attention; null: the input channels (DeepMind's "kv"
            shape).
        cross_attention_widening_factor: the cross-attention MLP's hidden width / latent_dim.
        self_attention_widening_factor: the self-attention MLPs' hidden width / latent_dim.
        share_cross_attends: cross-attends 2..n share one set of weights (the first has its own), as in the paper.
        share_latent_blocks: all latent Transformer blocks share one set of weights, as in the paper.
        dropout: on attention probabilities and residual branches.
        activation_checkpointing: recompute each attention layer's activations in backward (less memory).
        input_keep: in training, the fraction of input elements each sample keeps (a random subset; 1: all);
            evaluation sees every element.
    """

    def __init__(
        self,
        adapter: InputAdapter,
        num_classes: int = 1000,
        num_latents: int = 512,
        latent_dim: int = 1024,
        num_cross_attends: int = 8,
        num_blocks: int | None = None,
        num_self_attends_per_block: int = 6,
        num_cross_attention_heads: int = 1,
        num_self_attention_heads: int = 8,
        cross_attention_qk_channels: int | None = None,
        cross_attention_widening_factor: int = 1,
        self_attention_widening_factor: int = 1,
        share_cross_attends: bool = True,
        share_latent_blocks: bool = True,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
        input_keep: float = 1.0,
    ):
        super().__init__()
        cfg = record(PerceiverConfig, locals())
        check_sizes("Perceiver", **sizes(cfg))
        cfg.num_blocks = num_blocks or num_cross_attends
        if not 0.0 < input_keep <= 1.0:
            raise ValueError(f"Perceiver: input_keep must be in (0, 1], got {input_keep}")
        if cfg.num_cross_attends > cfg.num_blocks:
            raise ValueError(f"Perceiver: num_cross_attends {num_cross_attends} > num_blocks {cfg.num_blocks}")
        self.config, self.adapter = cfg, adapter
        self.latents = init_latents(num_latents, latent_dim)  # (N, D)

        def cross() -> CrossAttentionLayer:
            return CrossAttentionLayer(
                latent_dim,
                adapter.num_output_channels,
                num_cross_attention_heads,
                cross_attention_qk_channels,
                None,
                cross_attention_widening_factor,
                dropout,
                checkpoint=activation_checkpointing,
            )

        def block() -> SelfAttentionBlock:
            return SelfAttentionBlock(
                num_self_attends_per_block,
                latent_dim,
                num_heads=num_self_attention_heads,
                widening_factor=self_attention_widening_factor,
                dropout=dropout,
                checkpoint=activation_checkpointing,
            )

        n_cross = min(cfg.num_cross_attends, 2) if share_cross_attends else cfg.num_cross_attends
        self.cross_attends = nn.ModuleList([cross() for _ in range(n_cross)])
        self.blocks = nn.ModuleList([block() for _ in range(1 if share_latent_blocks else cfg.num_blocks)])
        # Which unique module runs at step i: cross-attend 0 alone, 1..n-1 on the shared one when sharing.
        self._cross_index = [min(i, n_cross - 1) for i in range(cfg.num_cross_attends)]
        self._block_index = [min(i, len(self.blocks) - 1) for i in range(cfg.num_blocks)]
        self.norm = nn.LayerNorm(latent_dim)
        self.head = nn.Linear(latent_dim, num_classes)
        self.apply(init_linear_)

    @classmethod
    def from_config(cls, adapter: InputAdapter, config: PerceiverConfig) -> Perceiver:
        return cls(adapter=adapter, **asdict(config))

    def forward(self, inputs: Tensor | dict[str, Tensor], pad_mask: Tensor | None = None) -> Tensor:
        x, mask = self.adapter(inputs, pad_mask)  # (B, M, C), (B, M) or None
        if self.training and self.config.input_keep < 1.0:
            x, mask = subsample_inputs(x, mask, self.config.input_keep)  # (B, K, C), K = keep * M
        z = self.latents.expand(x.shape[0], -1, -1)  # (B, N, D)
        # What a cross-attend computes from the inputs alone is computed once: a shared cross-attend's k, v (not
        # n - 1 times), and the normalised inputs that every cross-attend which absorbs its projections reads.
        cache: dict[object, Tensor] = {}
        for i, b in enumerate(self._block_index):
            if i < len(self._cross_index):
                c = self._cross_index[i]
                layer = self.cross_attends[c]
                key = ("x_hat", layer.norm_kv.eps) if layer.absorbs(z.shape[1], x.shape[1]) else c
                z, cache[key] = layer(z, x, mask, kv=cache.get(key), return_kv=True)  # (B, N, D)
            z = self.blocks[b](z)  # (B, N, D)
        return self.head(self.norm(z.mean(dim=1)))  # (B, num_classes)

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self)

    def flops_per_sample(self) -> int:
        """Analytic forward FLOPs (2 x multiply-adds of the matmuls) for one sample, as executed: a shared
        cross-attend projects k, v once, and a cross-attend that absorbs its projections (attention.py) projects
        nothing (the paper's 707.2B projects k, v at every cross-attend: count it unshared, inside
        `attention.projected_cross_attention(model)`). In training mode with input_keep < 1 the cross-attends
        see round(input_keep * M) elements."""
        n, m = self.config.num_latents, self.adapter.num_elements
        if self.training and self.config.input_keep < 1.0:
            m = max(1, round(self.config.input_keep * m))
        flops = self.adapter.flops()
        flops += sum(
            self.cross_attends[c].flops(
                n, m, project_kv=c not in self._cross_index[:i], expanded_queries=i == 0
            )  # the first reads the latents
            for i, c in enumerate(self._cross_index)
        )
        flops += sum(self.blocks[b].flops(n) for b in self._block_index)
        return flops + 2 * self.head.in_features * self.head.out_features


PerceiverConfig = config_class(Perceiver)
