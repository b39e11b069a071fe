"""Dense Perceiver IO decoding: one query per output element (a pixel's flow, a video patch, an audio patch).

`DenseDecoder` cross-attends a batch of queries to the latents and projects each to its output channels. Each
query is decoded independently of the others (LayerNorm, attention over the latents, MLP: all per query), so

- a subset of queries (`query_indices`) decodes to exactly the rows of the full decode at those indices: the
  paper trains its autoencoder on a random subset of output points;
- queries can be decoded in chunks: in eval every query is decoded, `chunk_size` at a time, so the attention
  matrix (B, h, chunk, N latents) and the chunk's activations bound the memory at any output size.

The queries come from a callable `make_queries(indices) -> (B, Q_chunk, C)`, so that a chunk's queries are built
only when that chunk is decoded (the full query array of a 16 x 224 x 224 video would be 600 MiB).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .attention import CrossAttentionLayer

QueryFn = Callable[[Tensor], Tensor]


def take_rows(x: Tensor, indices: Tensor) -> Tensor:
    """Rows of x (B, M, C) at indices (Q,) (the same for every sample) or (B, Q) (per sample) -> (B, Q, C)."""
    if indices.ndim == 1:
        return x.index_select(1, indices.to(x.device))
    return x.gather(1, indices.to(x.device)[..., None].expand(-1, -1, x.shape[-1]))


def random_query_indices(num_queries: int, num_samples: int, batch_size: int, device=None,
                         generator: torch.Generator | None = None) -> Tensor:
    """A random subset of num_samples of the num_queries outputs per sample, without repeats: (B, Q) int64, sorted.

    For training on a subset of the outputs (the paper's autoencoder): pass it as `query_indices` and gather the
    targets at the same indices (`take_rows(targets.flatten(1, -2), idx)`).

    Args:
        num_queries: the outputs of the full decode (e.g. H * W pixels).
        num_samples: how many to keep per sample (at most num_queries).
        batch_size: B.
        device, generator: where to draw them, and the random stream (default: torch's global one).
    """
    if not 0 < num_samples <= num_queries:
        raise ValueError(f"random_query_indices: num_samples must be in 1..{num_queries}, got {num_samples}")
    scores = torch.rand(batch_size, num_queries, generator=generator, device=device)
    return scores.topk(num_samples, dim=1, sorted=False).indices.sort(dim=1).values      # (B, Q)


class DenseDecoder(nn.Module):
    """Queries (B, Q, query_channels) cross-attend to latents (B, N, latent_dim) -> Linear -> (B, Q, output_channels).

    Args:
        query_channels: channels of each query (the cross-attention's q_dim and its output width).
        latent_dim: channels of the latents (kv_dim).
        output_channels: channels of each output element (flow: 2); 0 or None: no final projection.
        num_heads: heads of the cross-attention.
        qk_channels: q/k width of the cross-attention; None: latent_dim (DeepMind's "kv" shape).
        v_channels: v width of the cross-attention; None: its q/k width.
        widening_factor: the cross-attention MLP's hidden width / query_channels.
        use_query_residual: add the attention output to the queries (off for position queries, as in HF).
        chunk_size: queries decoded at a time in eval (or without autograd); None: all at once.
        dropout: on attention probabilities and residual branches.
        checkpoint: recompute the cross-attention's activations in backward (activation checkpointing).
    """

    def __init__(self, query_channels: int, latent_dim: int, output_channels: int | None, num_heads: int = 1,
                 qk_channels: int | None = None, v_channels: int | None = None, widening_factor: int = 1,
                 use_query_residual: bool = False, chunk_size: int | None = 8192, dropout: float = 0.0,
                 checkpoint: bool = False):
        super().__init__()
        self.cross = CrossAttentionLayer(query_channels, latent_dim, num_heads, qk_channels, v_channels,
                                         widening_factor, dropout, use_query_residual=use_query_residual,
                                         checkpoint=checkpoint)
        # Many queries against few latents: project the latents' k, v once, reused by every chunk.
        self.cross.absorb = False
        self.head = nn.Linear(query_channels, output_channels) if output_channels else nn.Identity()
        self.chunk_size = chunk_size

    def forward(self, z: Tensor, make_queries: QueryFn, num_queries: int, query_indices: Tensor | None = None
                ) -> Tensor:
        """z (B, N, latent_dim) -> (B, Q, output_channels).

        Args:
            z: the latents after the processor.
            make_queries: indices (Q,) or (B, Q) int64 -> queries (B, Q, query_channels) at those output indices.
            num_queries: the number of output elements (the full decode's Q).
            query_indices: decode only these outputs ((Q,) or (B, Q) flat indices); None: all of them, in order.
        """
        idx = query_indices if query_indices is not None else torch.arange(num_queries, device=z.device)
        kv = self.cross.project_kv(z)                                            # (B, N, Cqk + Cv), once
        n = idx.shape[-1]
        chunk = self.chunk_size if (self.chunk_size and (not self.training or not torch.is_grad_enabled())) else n
        outs = []
        for start in range(0, n, chunk):
            # in the latents' dtype: under FSDP2 the unit's inputs come cast to bf16, queries built here do not
            q = make_queries(idx[..., start:start + chunk]).to(z.dtype)          # (B, q, query_channels)
            outs.append(self.head(self.cross(q, None, kv=kv)))                   # (B, q, output_channels)
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)             # (B, Q, output_channels)

    def flops(self, num_queries: int, num_latents: int) -> int:
        """Forward FLOPs per sample: the cross-attend (k, v of the latents projected once) and the head."""
        head = 0
        if isinstance(self.head, nn.Linear):
            head = 2 * num_queries * self.head.in_features * self.head.out_features
        return self.cross.flops(num_queries, num_latents) + head
