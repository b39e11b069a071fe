"""Perceiver IO (Jaegle et al. 2021): encode (one cross-attend), process (a latent Transformer block applied
num_blocks times, shared weights), decode (output queries cross-attend to the latents), then a head.

Heads: "linear" (Linear(query channels -> num_classes)) or "tied_embedding" (logits = out @ E^T + b with E the
adapter's byte embedding, HF's masked language model). One trainable query gives (B, num_classes); more
queries give (B, Q, num_classes), e.g. (B, L, vocab) for masked byte modelling.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import Tensor, nn

from .adapters import InputAdapter
from .attention import CrossAttentionLayer, SelfAttentionBlock
from .checks import check_sizes
from .hf_names import IO_NAMES, released
from .hparams import config_class, record, sizes
from .param_groups import no_weight_decay_names
from .queries import QueryProvider, TrainableQueries
from .weight_init import init_latents, init_linear_

# HF's deepmind/vision-perceiver-fourier in our names (declared once, in hf_names.HF_CONFIGS): the defaults below.
_VISION_RELEASE = released("vision", (*IO_NAMES, ("num_labels", "num_classes")))


class PerceiverIO(nn.Module):
    """adapter -> cross-attend -> processor -> decoder(queries) -> head.

    forward(inputs, pad_mask=None) -> (B, num_classes) or (B, Q, num_classes). The defaults are the paper's
    ImageNet model (= HF deepmind/vision-perceiver-fourier with a 64-band Fourier ImageAdapter).

    Args:
        adapter: turns a batch into (B, M, C) input elements (an InputAdapter, e.g. ImageAdapter).
        num_classes: output logits per query (classes; the vocabulary for masked byte modelling).
        queries: the decoder's output queries (a QueryProvider); null: one trainable query of latent_dim channels
            (classification).
        num_latents: N, the rows of the learned latent array.
        latent_dim: D, the latents' channels.
        num_blocks: how many times the processor block runs.
        num_self_attends_per_block: self-attention layers in the processor block.
        share_blocks: the num_blocks runs share one block's weights (paper); false: a block each.
        num_cross_attention_heads: heads of the encoder's cross-attention.
        num_self_attention_heads: heads of the processor's self-attention.
        cross_attention_qk_channels: q/k width of the encoder's cross-attention; null: the input channels ("kv"
            shape).
        cross_attention_v_channels: v width of the encoder's cross-attention; null: its q/k width.
        self_attention_qk_channels: q/k width of the self-attention; null: latent_dim.
        self_attention_v_channels: v width of the self-attention; null: its q/k width.
        cross_attention_widening_factor: the encoder MLP's hidden width / latent_dim.
        self_attention_widening_factor: the processor MLPs' hidden width / latent_dim.
        decoder_num_heads: heads of the decoder's cross-attention.
        decoder_qk_channels: q/k width of the decoder's cross-attention; null: latent_dim ("kv" shape).
        decoder_v_channels: v width of the decoder's cross-attention; null: its q/k width.
        decoder_widening_factor: the decoder MLP's hidden width / the query channels.
        decoder_query_residual: add the decoder's attention output to its queries (false for HF's masked language
            model).
        output_head: "linear" (Linear(query channels -> num_classes)) or "tied_embedding" (logits against the
            adapter's byte embedding, HF's masked language model).
        dropout: on attention probabilities and residual branches.
        activation_checkpointing: recompute each attention layer's activations in backward (less memory).
    """

    def __init__(
        self,
        adapter: InputAdapter,
        num_classes: int = _VISION_RELEASE["num_classes"],
        queries: QueryProvider | None = None,
        num_latents: int = _VISION_RELEASE["num_latents"],
        latent_dim: int = _VISION_RELEASE["latent_dim"],
        num_blocks: int = _VISION_RELEASE["num_blocks"],
        num_self_attends_per_block: int = _VISION_RELEASE["num_self_attends_per_block"],
        share_blocks: bool = True,
        num_cross_attention_heads: int = _VISION_RELEASE["num_cross_attention_heads"],
        num_self_attention_heads: int = _VISION_RELEASE["num_self_attention_heads"],
        cross_attention_qk_channels: int | None = None,
        cross_attention_v_channels: int | None = None,
        self_attention_qk_channels: int | None = None,
        self_attention_v_channels: int | None = None,
        cross_attention_widening_factor: int = 1,
        self_attention_widening_factor: int = 1,
        decoder_num_heads: int = 1,
        decoder_qk_channels: int | None = None,
        decoder_v_channels: int | None = None,
        decoder_widening_factor: int = 1,
        decoder_query_residual: bool = True,
        output_head: str = "linear",
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.config = record(PerceiverIOConfig, locals())
        check_sizes("PerceiverIO", **sizes(self.config))
        self.adapter = adapter
        self.queries = queries if queries is not None else TrainableQueries(1, latent_dim)
        ckpt = activation_checkpointing
        self.latents = init_latents(num_latents, latent_dim)  # (N, D)
        self.encoder = CrossAttentionLayer(
            latent_dim,
            adapter.num_output_channels,
            num_cross_attention_heads,
            cross_attention_qk_channels,
            cross_attention_v_channels,
            cross_attention_widening_factor,
            dropout,
            checkpoint=ckpt,
        )
        self.processor = nn.ModuleList(
            [
                SelfAttentionBlock(
                    num_self_attends_per_block,
                    latent_dim,
                    num_heads=num_self_attention_heads,
                    qk_channels=self_attention_qk_channels,
                    v_channels=self_attention_v_channels,
                    widening_factor=self_attention_widening_factor,
                    dropout=dropout,
                    checkpoint=ckpt,
                )
                for _ in range(1 if share_blocks else num_blocks)
            ]
        )
        self._block_index = [min(i, len(self.processor) - 1) for i in range(num_blocks)]
        self.decoder = CrossAttentionLayer(
            self.queries.num_channels,
            latent_dim,
            decoder_num_heads,
            decoder_qk_channels,
            decoder_v_channels,
            decoder_widening_factor,
            dropout,
            use_query_residual=decoder_query_residual,
            checkpoint=ckpt,
        )
        if output_head == "linear":
            self.head = nn.Linear(self.queries.num_channels, num_classes)
        elif output_head == "tied_embedding":
            emb = getattr(adapter, "embedding", None)
            if not isinstance(emb, nn.Embedding) or emb.weight.shape != (num_classes, self.queries.num_channels):
                raise ValueError(
                    "PerceiverIO: output_head='tied_embedding' needs an adapter with an `embedding` of "
                    f"shape (num_classes={num_classes}, query channels={self.queries.num_channels})"
                )
            self.head_bias = nn.Parameter(torch.zeros(num_classes))
        else:
            raise ValueError(f"PerceiverIO: output_head must be 'linear' or 'tied_embedding', got {output_head!r}")
        self.apply(init_linear_)
        # One query that does not follow the input length: a classifier, logits (B, num_classes).
        self._single_output = self.queries.num_queries == 1 and not getattr(self.queries, "match_input_length", False)

    @classmethod
    def from_config(
        cls, adapter: InputAdapter, config: PerceiverIOConfig, queries: QueryProvider | None = None
    ) -> PerceiverIO:
        return cls(adapter=adapter, queries=queries, **asdict(config))

    def forward(self, inputs: Tensor | dict[str, Tensor], pad_mask: Tensor | None = None) -> Tensor:
        x, mask = self.adapter(inputs, pad_mask)  # (B, M, C)
        z = self.encoder(self.latents.expand(x.shape[0], -1, -1), x, mask)  # (B, N, D)
        for b in self._block_index:
            z = self.processor[b](z)  # (B, N, D)
        out = self.decoder(self.queries(x), z)  # (B, Q, Cq)
        if self.config.output_head == "linear":
            logits = self.head(out)  # (B, Q, K)
        else:
            logits = out @ self.adapter.embedding.weight.t() + self.head_bias  # (B, Q, vocab)
        return logits[:, 0] if self._single_output else logits

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self)

    def flops_per_sample(self) -> int:
        """Analytic forward FLOPs (2 x multiply-adds of the matmuls) for one sample, of the paths that run (the
        encoder and a one-query decoder absorb their k/v projections; see attention.py)."""
        n, m = self.config.num_latents, self.adapter.num_elements
        q = m if getattr(self.queries, "match_input_length", False) else self.queries.num_queries
        flops = self.adapter.flops() + self.encoder.flops(n, m, expanded_queries=True)  # the latents
        flops += sum(self.processor[b].flops(n) for b in self._block_index)
        flops += self.decoder.flops(q, n)
        return flops + 2 * q * self.queries.num_channels * self.config.num_classes


PerceiverIOConfig = config_class(PerceiverIO)
