"""Input adapters: turn a batch of one modality into a (B, M, C) element array for cross-attention.

Every adapter takes `input_shape` (the per-sample shape the data module reports, docs/architecture.md),
exposes `num_output_channels` (C) and `num_elements` (M), and returns `(elements, pad_mask)` where pad_mask
is bool (B, M) with True at padded elements, or None.

permute_seed: the data module scrambled the elements with a fixed seeded permutation; the adapter computes its
position features on the original grid and reorders them the same way, so each element keeps its true position
(the paper's permuted ImageNet). The element granularity is the adapter's: pixels, patches, mel bins, bytes.

(Over 400 lines because it holds one adapter per modality, each a short class with its `Args:`, which
`perceiver-lit fit --help` prints; they share the position-feature helpers above them, and their class paths,
`perceiver_lit.models.adapters.<Name>`, are in every shipped config and saved run config.)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .checks import check_sizes
from .hparams import declared_defaults
from .position import FourierPositionEncoding, LearnedPositionEncoding, fourier_features, num_fourier_channels
from .weight_init import trunc_normal_

PadMask = Tensor | None


class InputAdapter(nn.Module):
    """Base class. Subclasses set num_output_channels and num_elements in __init__."""

    num_output_channels: int
    num_elements: int

    def flops(self) -> int:
        """Forward FLOPs (2 x MACs) per sample of any learned preprocessing; 0 for plain features."""
        return 0


class _GridAdapter(InputAdapter):
    """Shared part of grid modalities: position features (Fourier or learned) concatenated or added.

    Its Args: are those of the grid adapters' arguments that mean the same in each (jsonargparse, and so
    `perceiver-lit fit --help`, reads a base class's Args: for a subclass; a subclass's own line takes precedence).

    Args:
        num_frequency_bands: Fourier bands per axis; 0: raw positions only.
        position_encoding: "fourier" or "learned".
        permute_seed: the data module's element permutation seed (linked from `data.permute_seed`): the position
            features are reordered by the same fixed permutation; null: unpermuted.
    """

    def _init_positions(
        self,
        grid: Sequence[int],
        feature_channels: int,
        position_encoding: str = "fourier",
        num_frequency_bands: int = 64,
        max_resolution: Sequence[int] | None = None,
        num_position_channels: int | None = None,
        concat_or_add: str = "concat",
        permute_seed: int | None = None,
    ) -> None:
        """The position features of `grid`; its defaults are every grid adapter's (`_POSITION`), declared here once."""
        check_sizes(type(self).__name__, max_resolution=max_resolution, num_position_channels=num_position_channels)
        check_sizes(type(self).__name__, minimum=0, num_frequency_bands=num_frequency_bands)
        if concat_or_add not in ("concat", "add"):
            raise ValueError(f"{type(self).__name__}: concat_or_add must be 'concat' or 'add', got {concat_or_add!r}")
        self.grid, self.concat_or_add = tuple(int(g) for g in grid), concat_or_add
        self.num_elements = math.prod(self.grid)
        self.pos_proj = None
        if position_encoding == "fourier":
            self.pos = FourierPositionEncoding(
                len(self.grid),
                num_frequency_bands,
                max_resolution,
                permute_seed=permute_seed,
                num_positions=self.num_elements,
            )
            pos_channels = self.pos.num_channels
            if concat_or_add == "add":  # Fourier features have their own width: project them onto the features
                self.pos_proj = nn.Linear(pos_channels, feature_channels)
                pos_channels = feature_channels
        elif position_encoding == "learned":
            pos_channels = feature_channels if concat_or_add == "add" else (num_position_channels or feature_channels)
            self.pos = LearnedPositionEncoding(self.num_elements, pos_channels, permute_seed)
        else:
            raise ValueError(
                f"{type(self).__name__}: position_encoding must be 'fourier' or 'learned', got {position_encoding!r}"
            )
        self.num_output_channels = feature_channels + (pos_channels if concat_or_add == "concat" else 0)

    def _add_positions(self, x: Tensor, grid: Sequence[int]) -> Tensor:
        """x (B, N, C) features in grid order -> (B, N, C + P) or (B, N, C)."""
        if isinstance(self.pos, FourierPositionEncoding):
            pos = self.pos(grid, x.device, x.dtype)  # (N, P), cached
            if self.pos_proj is not None:
                pos = self.pos_proj(pos)
        else:
            if math.prod(grid) != self.num_elements:
                raise ValueError(
                    f"{type(self).__name__}: learned positions are for grid {self.grid}, got {tuple(grid)}"
                )
            pos = self.pos().to(x.dtype)  # (N, P)
        if self.concat_or_add == "add":
            return x + pos
        return torch.cat([x, pos.expand(x.shape[0], -1, -1)], dim=-1)


# The position settings' defaults, which each grid adapter's signature takes by name (one declaration per setting);
# permute_seed's is every adapter's (the data module's permutation, linked to each).
_POSITION = declared_defaults(_GridAdapter._init_positions)


class ImageAdapter(_GridAdapter):
    """Images (B, H, W, C) channels-last -> (B, H'W', C' + P).

    permute_seed is documented on _GridAdapter.

    Args:
        input_shape: per-sample (H, W, C) (linked from the data module's `input_shape`).
        num_frequency_bands: Fourier bands per axis (paper: 64); 0: raw positions only.
        max_resolution: (H, W) that sets the top Fourier frequency (res / 2); null: the post-prep grid (paper:
            224, 224).
        position_encoding: "fourier" (fixed features) or "learned" (a trainable table per pixel).
        num_position_channels: channels of a learned position table with concat_or_add "concat"; null: the
            feature channels.
        concat_or_add: "concat" position features to the pixel features, or "add" them (projected to the
            feature width).
        prep: "pixels" (C' = C), "conv1x1" (1x1 conv to prep_channels, HF's learned-position model) or "conv"
            (7x7/2 conv + BatchNorm + ReLU + 3x3/2 max-pool to prep_channels, HF's conv model: 224 -> 55).
        prep_channels: output channels of the "conv1x1" / "conv" prep.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_frequency_bands: int = _POSITION["num_frequency_bands"],
        max_resolution: Sequence[int] | None = _POSITION["max_resolution"],
        position_encoding: str = _POSITION["position_encoding"],
        num_position_channels: int | None = _POSITION["num_position_channels"],
        concat_or_add: str = _POSITION["concat_or_add"],
        prep: str = "pixels",
        prep_channels: int = 64,
        permute_seed: int | None = _POSITION["permute_seed"],
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"ImageAdapter: input_shape must be (H, W, C), got {tuple(input_shape)}")
        check_sizes("ImageAdapter", input_shape=tuple(input_shape), prep_channels=prep_channels)
        h, w, c = input_shape
        if prep == "pixels":
            self.prep, feat = None, c
        elif prep == "conv1x1":
            self.prep, feat = nn.Conv2d(c, prep_channels, kernel_size=1), prep_channels
        elif prep == "conv":
            self.prep = nn.Sequential(
                nn.Conv2d(c, prep_channels, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(prep_channels),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2),
            )
            feat = prep_channels
            h, w = (math.ceil(h / 2) - 3) // 2 + 1, (math.ceil(w / 2) - 3) // 2 + 1
        else:
            raise ValueError(f"ImageAdapter: prep must be 'pixels', 'conv1x1' or 'conv', got {prep!r}")
        self.input_shape, self.prep_type, self.in_channels = tuple(input_shape), prep, c
        self._init_positions(
            (h, w),
            feat,
            position_encoding,
            num_frequency_bands,
            max_resolution,
            num_position_channels,
            concat_or_add,
            permute_seed,
        )

    def forward(self, x: Tensor, pad_mask: PadMask = None) -> tuple[Tensor, PadMask]:
        if self.prep is not None:
            x = self.prep(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, H', W', C')
        B, H, W, C = x.shape
        return self._add_positions(x.reshape(B, H * W, C), (H, W)), pad_mask

    def flops(self) -> int:
        if self.prep is None:
            return 0
        conv = self.prep if self.prep_type == "conv1x1" else self.prep[0]
        h, w = math.ceil(self.input_shape[0] / conv.stride[0]), math.ceil(self.input_shape[1] / conv.stride[1])
        return 2 * h * w * conv.in_channels * conv.out_channels * math.prod(conv.kernel_size)


class VideoAdapter(_GridAdapter):
    """Video (B, T, H, W, C) -> space-time patches (B, T'H'W', pt*ph*pw*C + P), 3-D Fourier positions.

    num_frequency_bands, position_encoding and permute_seed are documented on _GridAdapter.

    Args:
        input_shape: per-sample (T, H, W, C) (linked from the data module's `input_shape`).
        patch_size: (pt, ph, pw) space-time patch; paper 2x8x8 for AudioSet; (1, 1, 1) keeps single voxels.
        max_resolution: (T', H', W') patch grid that sets the top Fourier frequency; null: the patch grid.
        concat_or_add: "concat" position features to the patch features, or "add" them.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        patch_size: Sequence[int] = (2, 8, 8),
        num_frequency_bands: int = _POSITION["num_frequency_bands"],
        max_resolution: Sequence[int] | None = _POSITION["max_resolution"],
        position_encoding: str = _POSITION["position_encoding"],
        concat_or_add: str = _POSITION["concat_or_add"],
        permute_seed: int | None = _POSITION["permute_seed"],
    ):
        if len(input_shape) != 4 or len(patch_size) != 3:
            raise ValueError(
                f"VideoAdapter: input_shape must be (T, H, W, C) and patch_size (pt, ph, pw), "
                f"got {tuple(input_shape)} and {tuple(patch_size)}"
            )
        check_sizes("VideoAdapter", input_shape=tuple(input_shape), patch_size=tuple(patch_size))
        if any(s % p for s, p in zip(input_shape[:3], patch_size)):
            raise ValueError(
                f"VideoAdapter: input_shape {tuple(input_shape)} not divisible by patch_size {tuple(patch_size)}"
            )
        super().__init__()  # after the checks above, which read only the arguments
        self.patch_size = tuple(patch_size)
        grid = [s // p for s, p in zip(input_shape[:3], patch_size)]
        self._init_positions(
            grid,
            math.prod(patch_size) * input_shape[3],
            position_encoding,
            num_frequency_bands,
            max_resolution,
            None,
            concat_or_add,
            permute_seed,
        )

    def forward(self, x: Tensor, pad_mask: PadMask = None) -> tuple[Tensor, PadMask]:
        B, T, H, W, C = x.shape
        pt, ph, pw = self.patch_size
        x = x.reshape(B, T // pt, pt, H // ph, ph, W // pw, pw, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
        grid = (T // pt, H // ph, W // pw)
        return self._add_positions(x.reshape(B, math.prod(grid), -1), grid), pad_mask  # (B, T'H'W', C')


class AudioAdapter(_GridAdapter):
    """Audio: raw waveform (B, S) -> (B, S/p, p + P) patches of p samples (paper 128), 1-D positions;
    or log-mel (B, F, M) -> (B, F*M, 1 + P), every time-frequency bin an element with 2-D positions.

    num_frequency_bands, position_encoding and permute_seed are documented on _GridAdapter.

    Args:
        input_shape: per-sample (S,) raw samples or (F, M) mel frames x bins (linked from the data module).
        samples_per_patch: raw waveform: samples per element (paper: 128); must divide S.
        max_resolution: the grid that sets the top Fourier frequency; null: the element grid.
        concat_or_add: "concat" position features to the audio features, or "add" them.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        samples_per_patch: int = 128,
        num_frequency_bands: int = _POSITION["num_frequency_bands"],
        max_resolution: Sequence[int] | None = _POSITION["max_resolution"],
        position_encoding: str = _POSITION["position_encoding"],
        concat_or_add: str = _POSITION["concat_or_add"],
        permute_seed: int | None = _POSITION["permute_seed"],
    ):
        super().__init__()
        check_sizes("AudioAdapter", input_shape=tuple(input_shape), samples_per_patch=samples_per_patch)
        if len(input_shape) == 1:
            if input_shape[0] % samples_per_patch:
                raise ValueError(
                    f"AudioAdapter: {input_shape[0]} samples not divisible by samples_per_patch {samples_per_patch}"
                )
            self.mel, grid, feat = False, (input_shape[0] // samples_per_patch,), samples_per_patch
        elif len(input_shape) == 2:
            self.mel, grid, feat = True, tuple(input_shape), 1
        else:
            raise ValueError(f"AudioAdapter: input_shape must be (S,) raw or (F, M) mel, got {tuple(input_shape)}")
        self.samples_per_patch = samples_per_patch
        self._init_positions(
            grid, feat, position_encoding, num_frequency_bands, max_resolution, None, concat_or_add, permute_seed
        )

    def forward(self, x: Tensor, pad_mask: PadMask = None) -> tuple[Tensor, PadMask]:
        B = x.shape[0]
        if self.mel:
            grid = tuple(x.shape[1:])
            x = x.reshape(B, -1, 1)  # (B, F*M, 1)
        else:
            x = x.reshape(B, -1, self.samples_per_patch)  # (B, S/p, p)
            grid = (x.shape[1],)
        return self._add_positions(x, grid), pad_mask


class PointCloudAdapter(InputAdapter):
    """Points (B, N, 3) -> (B, N, 3 + 2*3*K): Fourier features of each point's own xyz (no grid).

    Bands are linspace(1, max_frequency, K) per axis (paper: K = 64, max frequency 1120). The positions are
    the data, so a permutation of the points permutes the elements and their features together.

    Args:
        input_shape: per-sample (N, D) points x coordinates (linked from the data module).
        num_frequency_bands: K, Fourier bands per coordinate (paper: 64).
        max_frequency: the top band's frequency (paper: 1120).
        permute_seed: accepted for a uniform interface and not used: the points carry their own positions.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_frequency_bands: int = 64,
        max_frequency: float = 1120.0,
        permute_seed: int | None = _POSITION["permute_seed"],
    ):
        super().__init__()
        if len(input_shape) != 2:
            raise ValueError(f"PointCloudAdapter: input_shape must be (N, D), got {tuple(input_shape)}")
        check_sizes("PointCloudAdapter", input_shape=tuple(input_shape))
        check_sizes("PointCloudAdapter", minimum=0, num_frequency_bands=num_frequency_bands)
        self.num_elements, self.dims = input_shape
        self.num_frequency_bands, self.max_frequency = num_frequency_bands, max_frequency
        self.num_output_channels = num_fourier_channels(self.dims, num_frequency_bands)

    def forward(self, x: Tensor, pad_mask: PadMask = None) -> tuple[Tensor, PadMask]:
        return fourier_features(x, [self.max_frequency] * self.dims, self.num_frequency_bands), pad_mask


class TextAdapter(InputAdapter):
    """UTF-8 byte token ids (B, L) in HF's layout (vocab 262) -> byte embedding + learned position (B, L, C).

    Args:
        input_shape: per-sample (L,) token count (linked from the data module).
        vocab_size: rows of the byte embedding (HF: 262 = 256 bytes + 6 special tokens).
        num_channels: C, the embedding and position width (HF language-perceiver: 768).
        max_seq_len: rows of the position table (HF language-perceiver: 2048); null: L.
        permute_seed: read the position table in the data module's seeded permuted order (needs max_seq_len ==
            L); null: unpermuted.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        vocab_size: int = 262,
        num_channels: int = 768,
        max_seq_len: int | None = None,
        permute_seed: int | None = _POSITION["permute_seed"],
    ):
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"TextAdapter: input_shape must be (L,), got {tuple(input_shape)}")
        check_sizes(
            "TextAdapter",
            input_shape=tuple(input_shape),
            vocab_size=vocab_size,
            num_channels=num_channels,
            max_seq_len=max_seq_len,
        )
        self.num_elements, self.num_output_channels = input_shape[0], num_channels
        max_seq_len = max_seq_len or input_shape[0]
        if max_seq_len < input_shape[0]:
            raise ValueError(f"TextAdapter: max_seq_len {max_seq_len} < input length {input_shape[0]}")
        self.embedding = nn.Embedding(vocab_size, num_channels)
        nn.init.normal_(self.embedding.weight, std=0.02)
        # A seeded permutation is over the L positions actually used, so permute a table of exactly L rows
        # when asked; otherwise keep the full max_seq_len table (HF's shape).
        self.pos = LearnedPositionEncoding(max_seq_len, num_channels, permute_seed)
        if permute_seed is not None and max_seq_len != input_shape[0]:
            raise ValueError("TextAdapter: permute_seed needs max_seq_len == input length")

    def forward(self, x: Tensor, pad_mask: PadMask = None) -> tuple[Tensor, PadMask]:
        return self.embedding(x) + self.pos(x.shape[1]), pad_mask  # (B, L, C)


ADAPTERS_BY_MODALITY = {
    "image": ImageAdapter,
    "video": VideoAdapter,
    "audio": AudioAdapter,
    "points": PointCloudAdapter,
    "text": TextAdapter,
}


def _build_adapter(name: str, spec: Mapping[str, Any] | InputAdapter, input_shape) -> InputAdapter:
    """An adapter from {"class_path": ..., "init_args": {...}}, plain kwargs (class by modality name), or a module."""
    if isinstance(spec, nn.Module):
        return spec
    spec = dict(spec or {})
    if "class_path" in spec:
        module, _, cls_name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module or __name__), cls_name)
        kwargs = dict(spec.get("init_args") or {})
    elif name in ADAPTERS_BY_MODALITY:
        cls, kwargs = ADAPTERS_BY_MODALITY[name], spec
    else:
        raise ValueError(
            f"MultimodalAdapter: modality {name!r} needs a class_path (known by name: {sorted(ADAPTERS_BY_MODALITY)})"
        )
    return cls(input_shape=input_shape, **kwargs)


class MultimodalAdapter(InputAdapter):
    """A dict of modalities -> one (B, sum M_m, C) array, C = max_m C_m + min_padding_size.

    Each modality's elements are padded to C with its own learned modality embedding (broadcast over its
    elements), then the modalities are concatenated in sorted-name order (DeepMind's order).

    Args:
        input_shape: {modality: per-sample shape} (linked from the data module's `input_shape`).
        adapters: {modality: adapter}: keyword arguments of the modality's adapter (the class by modality name:
            image, video, audio, points, text), {"class_path", "init_args"} for another class, or a built adapter;
            a modality left out gets its adapter's defaults.
        min_padding_size: channels of learned modality embedding every modality gets at least (C is the widest
            modality's + this).
        modality_dropout: {modality: p}: in training, drop that whole modality for a fraction p of the samples
            (paper: video 0.3) by masking its elements out of cross-attention. A sample never loses every modality.
        permute_seed: passed to every modality's adapter given by keyword arguments (see ImageAdapter).
    """

    # `adapters` may hold {"class_path", ...} specs without input_shape, which this class builds with each
    # modality's shape: `perceiver_lit.models.pretrained` hands them over unbuilt
    builds_own_specs = ("adapters",)

    def __init__(
        self,
        input_shape: Mapping[str, Sequence[int]],
        adapters: Mapping[str, Mapping[str, Any] | InputAdapter] | None = None,
        min_padding_size: int = 4,
        modality_dropout: Mapping[str, float] | None = None,
        permute_seed: int | None = _POSITION["permute_seed"],
    ):
        super().__init__()
        check_sizes("MultimodalAdapter", minimum=0, min_padding_size=min_padding_size)
        adapters = dict(adapters or {})
        unknown = set(adapters) - set(input_shape)
        if unknown:
            raise ValueError(
                f"MultimodalAdapter: adapters {sorted(unknown)} have no input_shape "
                f"(data modalities: {sorted(input_shape)})"
            )
        self.names = sorted(input_shape)
        built = {}
        for n in self.names:
            spec = adapters.get(n) or {}
            if permute_seed is not None and isinstance(spec, Mapping) and "class_path" not in spec:
                spec = {"permute_seed": permute_seed, **spec}
            built[n] = _build_adapter(n, spec, tuple(input_shape[n]))
        self.adapters = nn.ModuleDict(built)
        self.num_output_channels = max(a.num_output_channels for a in built.values()) + min_padding_size
        self.num_elements = sum(a.num_elements for a in built.values())
        # Learned per-modality padding, truncated normal std 0.02 (DeepMind: TrainablePositionEncoding).
        self.padding = nn.ParameterDict(
            {
                n: nn.Parameter(trunc_normal_(torch.empty(self.num_output_channels - a.num_output_channels), 0.02))
                for n, a in built.items()
            }
        )
        self.modality_dropout = dict(modality_dropout or {})
        bad = set(self.modality_dropout) - set(self.names)
        if bad:
            raise ValueError(f"MultimodalAdapter: modality_dropout names unknown modalities {sorted(bad)}")

    def forward(self, x: Mapping[str, Tensor], pad_mask: Mapping[str, Tensor] | None = None) -> tuple[Tensor, PadMask]:
        parts, masks = [], []
        B = next(iter(x.values())).shape[0]
        drops = self._sample_drops(B, next(iter(x.values())).device)
        for n in self.names:
            e, m = self.adapters[n](x[n], None if pad_mask is None else pad_mask.get(n))  # (B, M_n, C_n)
            pad = self.padding[n].to(e.dtype).expand(B, e.shape[1], -1)
            parts.append(torch.cat([e, pad], dim=-1))  # (B, M_n, C)
            if n in drops:
                d = drops[n][:, None].expand(B, e.shape[1])
                m = d if m is None else (m | d)
            masks.append(m)
        out = torch.cat(parts, dim=1)  # (B, M, C)
        if all(m is None for m in masks):
            return out, None
        full = [
            torch.zeros(B, p.shape[1], dtype=torch.bool, device=out.device) if m is None else m
            for m, p in zip(masks, parts)
        ]
        return out, torch.cat(full, dim=1)

    def _sample_drops(self, batch_size: int, device) -> dict[str, Tensor]:
        if not self.training or not self.modality_dropout:
            return {}
        drops = {n: torch.rand(batch_size, device=device) < p for n, p in self.modality_dropout.items() if p > 0}
        if len(drops) == len(self.names):  # keep at least one modality per sample: undrop the first where all drop
            all_dropped = torch.stack(list(drops.values())).all(0)
            first = self.names[0]
            drops[first] = drops[first] & ~all_dropped
        return drops

    def flops(self) -> int:
        return sum(a.flops() for a in self.adapters.values())
