"""Output query providers for the Perceiver IO decoder: each returns (B, Q, num_channels) queries.

- TrainableQueries: a learned (Q, C) array; Q = 1 for classification. match_input_length=True reads the first
  L rows for an input of L elements (HF's masked language model: one learned query per byte, 2048 rows).
- FourierQueries: Fourier position features of an output grid (dense outputs: per pixel, per byte), cached.
- MultimodalQueries: per-modality queries, each padded with a learned modality embedding, concatenated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .checks import check_sizes
from .position import FourierPositionEncoding
from .weight_init import trunc_normal_


class QueryProvider(nn.Module):
    num_channels: int
    num_queries: int

    def forward(self, inputs: Tensor) -> Tensor:
        """inputs: the adapted (B, M, C_in) encoder inputs (for batch size, length, device, dtype) -> (B, Q, C)."""
        raise NotImplementedError


class TrainableQueries(QueryProvider):
    """A learned (Q, C) query array (truncated normal, std 0.02), the same for every sample.

    Args:
        num_queries: Q; 1 for classification.
        num_channels: C, the queries' width (the decoder's q_dim).
        match_input_length: read the first L rows for an input of L elements (HF's masked language model: one
            learned query per byte).
    """

    def __init__(self, num_queries: int = 1, num_channels: int = 1024, match_input_length: bool = False):
        super().__init__()
        check_sizes("TrainableQueries", num_queries=num_queries, num_channels=num_channels)
        self.queries = nn.Parameter(torch.empty(num_queries, num_channels))
        trunc_normal_(self.queries, std=0.02)
        self.num_queries, self.num_channels, self.match_input_length = num_queries, num_channels, match_input_length

    def forward(self, inputs: Tensor) -> Tensor:
        q = self.queries
        if self.match_input_length:
            if inputs.shape[1] > q.shape[0]:
                raise ValueError(f"TrainableQueries: input has {inputs.shape[1]} elements, only {q.shape[0]} queries")
            q = q[: inputs.shape[1]]
        return q.expand(inputs.shape[0], -1, -1)  # (B, Q, C)


class FourierQueries(QueryProvider):
    """One query per element of an output grid (e.g. (H, W) pixels or (L,) bytes): its Fourier features.

    Args:
        output_shape: the output grid, e.g. (H, W).
        num_frequency_bands: Fourier bands per axis; 0: raw positions only.
        max_resolution: per-axis resolution that sets the top frequency (res / 2); null: output_shape.
    """

    def __init__(
        self, output_shape: Sequence[int], num_frequency_bands: int = 64, max_resolution: Sequence[int] | None = None
    ):
        super().__init__()
        check_sizes("FourierQueries", output_shape=tuple(output_shape), max_resolution=max_resolution)
        check_sizes("FourierQueries", minimum=0, num_frequency_bands=num_frequency_bands)
        self.output_shape = tuple(output_shape)
        self.pos = FourierPositionEncoding(len(self.output_shape), num_frequency_bands, max_resolution)
        self.num_channels = self.pos.num_channels
        self.num_queries = 1
        for s in self.output_shape:
            self.num_queries *= s

    def forward(self, inputs: Tensor) -> Tensor:
        return self.pos(self.output_shape, inputs.device, inputs.dtype).expand(inputs.shape[0], -1, -1)


class MultimodalQueries(QueryProvider):
    """Queries of several modalities, each padded to a common width with a learned modality embedding.

    `sizes` gives each modality's query count in output order (sorted names) to split the decoder output.

    Args:
        queries: {modality: QueryProvider}.
        min_padding_size: channels of learned modality embedding every modality gets at least (the common width
            is the widest modality's + this).
    """

    def __init__(self, queries: Mapping[str, QueryProvider], min_padding_size: int = 2):
        super().__init__()
        check_sizes("MultimodalQueries", minimum=0, min_padding_size=min_padding_size)
        self.names = sorted(queries)
        self.providers = nn.ModuleDict({n: queries[n] for n in self.names})
        self.num_channels = max(q.num_channels for q in queries.values()) + min_padding_size
        self.padding = nn.ParameterDict(
            {  # truncated normal std 0.02, as DeepMind's TrainablePositionEncoding
                n: nn.Parameter(trunc_normal_(torch.empty(self.num_channels - q.num_channels), 0.02))
                for n, q in queries.items()
            }
        )
        self.sizes = {n: self.providers[n].num_queries for n in self.names}
        self.num_queries = sum(self.sizes.values())

    def forward(self, inputs: Tensor) -> Tensor:
        parts = []
        for n in self.names:
            q = self.providers[n](inputs)  # (B, Q_n, C_n)
            pad = self.padding[n].to(q.dtype).expand(inputs.shape[0], q.shape[1], -1)
            parts.append(torch.cat([q, pad], dim=-1))  # (B, Q_n, C)
        return torch.cat(parts, dim=1)  # (B, Q, C)

    def split(self, outputs: Tensor) -> dict[str, Tensor]:
        """(B, Q, K) decoder outputs -> {modality: (B, Q_n, K)}."""
        return dict(zip(self.names, outputs.split(list(self.sizes.values()), dim=1)))
