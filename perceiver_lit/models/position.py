"""Position features: Fourier features in DeepMind's / HF's layout, and learned position embeddings.

Fourier layout (per element, d spatial axes, K bands per axis):
    [pos_1 .. pos_d, sin(pi f_k pos_i) for i in 1..d, k in 1..K, cos(pi f_k pos_i) likewise]
with positions linspace(-1, 1) per axis (meshgrid "ij", row-major flattening) and
f = linspace(1, max_resolution_i / 2, K) per axis (the Nyquist frequency of the target resolution).

Grid features depend only on the input shape, so `FourierPositionEncoding` computes them once per
(shape, device, dtype) and keeps them in a non-persistent cache on that device: no per-forward CPU work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .checks import check_sizes
from .weight_init import trunc_normal_


def seeded_permutation(n: int, seed: int) -> Tensor:
    """The fixed element permutation of docs/architecture.md "Permuted inputs" (same call as the data modules)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def grid_positions(index_dims: Sequence[int], device=None) -> Tensor:
    """(*index_dims, d) float32 positions, linspace(-1, 1) per axis, meshgrid "ij"."""
    axes = [torch.linspace(-1.0, 1.0, n, dtype=torch.float32, device=device) for n in index_dims]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def fourier_features(
    pos: Tensor, max_frequencies: Sequence[float], num_bands: int, concat_pos: bool = True, sine_only: bool = False
) -> Tensor:
    """Fourier features of positions.

    pos: (..., d) positions (in [-1, 1] for grids); max_frequencies: d top frequencies (res / 2 for grids).
    Returns (..., d + 2 d K) ([pos, sin, cos]) or fewer channels with concat_pos=False / sine_only=True.
    """
    d = pos.shape[-1]
    if len(max_frequencies) != d:
        raise ValueError(f"fourier_features: {len(max_frequencies)} max frequencies for {d}-D positions")
    freqs = torch.stack(
        [torch.linspace(1.0, float(f), num_bands, device=pos.device, dtype=pos.dtype) for f in max_frequencies]
    )  # (d, K)
    x = (pos[..., :, None] * freqs).flatten(-2)  # (..., d*K), axis-major
    feats = [torch.sin(math.pi * x)] if sine_only else [torch.sin(math.pi * x), torch.cos(math.pi * x)]
    if concat_pos:
        feats.insert(0, pos)
    return torch.cat(feats, dim=-1)


def num_fourier_channels(num_dims: int, num_bands: int, concat_pos: bool = True, sine_only: bool = False) -> int:
    return num_dims * num_bands * (1 if sine_only else 2) + (num_dims if concat_pos else 0)


class FourierPositionEncoding(nn.Module):
    """Fourier features of a regular grid, cached per (index_dims, device, dtype).

    Args:
        num_dims: axes of the grid.
        num_bands: Fourier bands per axis; 0: the raw positions only.
        max_resolution: per-axis resolution that sets the top frequency (res / 2); None: the grid itself.
        concat_pos: put the raw positions before the sines and cosines (DeepMind's layout).
        sine_only: sines only, no cosines.
        permute_seed: reorder the num_positions grid elements by the fixed seeded permutation (permuted inputs);
            the permutation is drawn here, once, so that forward stays traceable (torch.compile).
        num_positions: the grid's element count; needed with permute_seed.
    """

    def __init__(
        self,
        num_dims: int,
        num_bands: int = 64,
        max_resolution: Sequence[int] | None = None,
        concat_pos: bool = True,
        sine_only: bool = False,
        permute_seed: int | None = None,
        num_positions: int | None = None,
    ):
        super().__init__()
        check_sizes(
            "FourierPositionEncoding", num_dims=num_dims, max_resolution=max_resolution, num_positions=num_positions
        )
        check_sizes("FourierPositionEncoding", minimum=0, num_bands=num_bands)
        if max_resolution is not None and len(max_resolution) != num_dims:
            raise ValueError(f"FourierPositionEncoding: max_resolution {tuple(max_resolution)} has not {num_dims} axes")
        if permute_seed is not None and num_positions is None:
            raise ValueError("FourierPositionEncoding: permute_seed needs num_positions (the grid's element count)")
        self.num_dims, self.num_bands = num_dims, num_bands
        self.max_resolution = None if max_resolution is None else tuple(max_resolution)
        self.concat_pos, self.sine_only, self.permute_seed = concat_pos, sine_only, permute_seed
        perm = None if permute_seed is None else seeded_permutation(num_positions, permute_seed)
        self.register_buffer("perm", perm, persistent=False)
        self._cache: dict[tuple, Tensor] = {}  # not a buffer: derived data, never saved in a checkpoint

    @property
    def num_channels(self) -> int:
        return num_fourier_channels(self.num_dims, self.num_bands, self.concat_pos, self.sine_only)

    def forward(self, index_dims: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
        """(N, num_channels) features for a grid of shape index_dims, N = prod(index_dims)."""
        key = (tuple(index_dims), device, dtype)
        feats = self._cache.get(key)
        if feats is None:
            # Constants: never inference tensors (a first fill in Lightning's sanity check or under
            # torch.inference_mode would make them unusable in a later training step's autograd graph).
            if torch.compiler.is_compiling():  # a cache fill inside a traced graph would hold a fake tensor
                return self._compute(index_dims, device, dtype)
            with torch.inference_mode(False), torch.no_grad():
                feats = self._cache[key] = self._compute(index_dims, device, dtype)
        return feats

    def _compute(self, index_dims: Sequence[int], device: torch.device, dtype: torch.dtype) -> Tensor:
        res = self.max_resolution or tuple(index_dims)
        pos = grid_positions(index_dims, device=device).reshape(-1, self.num_dims)  # (N, d)
        feats = fourier_features(pos, [r / 2 for r in res], self.num_bands, self.concat_pos, self.sine_only)
        if self.perm is not None:
            if self.perm.shape[0] != feats.shape[0]:
                raise ValueError(
                    f"FourierPositionEncoding: permutation of {self.perm.shape[0]} positions, "
                    f"grid {tuple(index_dims)} has {feats.shape[0]}"
                )
            feats = feats[self.perm.to(device)]
        return feats.to(dtype)

    def extra_repr(self) -> str:
        return f"num_dims={self.num_dims}, num_bands={self.num_bands}, max_resolution={self.max_resolution}"


class LearnedPositionEncoding(nn.Module):
    """A trainable (N, C) table (truncated normal, std 0.02); optionally read in a seeded permuted order.

    Args:
        num_positions: N, rows of the table.
        num_channels: C, its width.
        permute_seed: read the rows in the fixed seeded permuted order (permuted inputs); None: in order.
    """

    def __init__(self, num_positions: int, num_channels: int, permute_seed: int | None = None):
        super().__init__()
        check_sizes("LearnedPositionEncoding", num_positions=num_positions, num_channels=num_channels)
        self.embeddings = nn.Parameter(torch.empty(num_positions, num_channels))
        trunc_normal_(self.embeddings, std=0.02)
        self.num_channels = num_channels
        perm = None if permute_seed is None else seeded_permutation(num_positions, permute_seed)
        self.register_buffer("perm", perm, persistent=False)

    def forward(self, num_positions: int | None = None) -> Tensor:
        """(N, C): the first num_positions rows (all by default), permuted if a seed was given."""
        emb = self.embeddings if self.perm is None else self.embeddings[self.perm]
        if num_positions is not None:
            if num_positions > emb.shape[0]:
                raise ValueError(f"LearnedPositionEncoding: {num_positions} positions asked, table has {emb.shape[0]}")
            emb = emb[:num_positions]
        return emb
