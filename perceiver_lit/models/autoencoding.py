"""Perceiver IO multimodal autoencoding (Jaegle et al. 2021, Sec. 4.3, Kinetics-700): exactly HF's
PerceiverForMultimodalAutoencoding / DeepMind's model.

    inputs {"video": (B, T, H, W, 3), "audio": (B, S), "label": (B, K) one-hot or (B,) class ids}
      --MultimodalAdapter: video 1x4x4 space-time patches + 3-D Fourier (32 bands), audio patches of 16 samples +
        1-D Fourier (192 bands), label one-hot (1 element); each padded to a common width with a learned modality
        embedding--> (B, M, 704); a modality's elements replaced by its learned mask token with probability
        mask_probs[m] (the official model: label 1.0, so it classifies the clip from video and audio)
    latents (784, 512) --cross-attend--> 8 self-attends
    queries per modality: video Fourier features of every output pixel (T, H, W), audio of every patch, label one
        learned query; each padded to 1026 channels with a learned modality embedding
      --DenseDecoder (shared by all modalities, 1 head) -> Linear(1026 -> 512)--> postprocessors:
        video Linear(512 -> 3) (B, T, H, W, 3); audio Linear(512 -> 16) (B, S); label Linear(512 -> K) (B, K)

Output subsampling: `query_indices={"video": idx, "audio": idx}` decodes only those outputs (flat indices into
(T, H, W) pixels and audio patches; (Q,) or (B, Q)): the paper trains on a random subset of outputs. Without them
every output is decoded, in chunks in eval. Query positions are DeepMind's subsampled-point convention,
-1 + 2 i / N per axis (not linspace(-1, 1)): the official model was trained and evaluated (in chunks) with
subsampled queries, and HF's model runs only with `subsampled_output_points`. So a subset decodes to exactly the
full decode's rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import InputAdapter, MultimodalAdapter, PadMask
from .decoders import DenseDecoder
from .hf_names import DENSE_NAMES, released
from .hparams import config_class, record
from .latent_encoder import LatentEncoderModel
from .param_groups import no_weight_decay_names
from .position import fourier_features, num_fourier_channels
from .weight_init import init_linear_, trunc_normal_


class OneHotAdapter(InputAdapter):
    """A label as one element: (B, K) one-hot (or any K-vector) or (B,) int class ids -> (B, 1, K); no positions.

    Args:
        input_shape: (K,) the number of classes.
    """

    def __init__(self, input_shape: Sequence[int]):
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"OneHotAdapter: input_shape must be (num_classes,), got {tuple(input_shape)}")
        self.num_classes = self.num_output_channels = int(input_shape[0])
        self.num_elements = 1

    def forward(self, x: Tensor, pad_mask: PadMask = None) -> tuple[Tensor, PadMask]:
        if x.ndim == 1:
            x = F.one_hot(x.long(), self.num_classes).float()
        if x.ndim != 2 or x.shape[1] != self.num_classes:
            raise ValueError(
                f"OneHotAdapter: labels must be (B,) class ids or (B, {self.num_classes}), got {tuple(x.shape)}"
            )
        return x[:, None, :], pad_mask  # (B, 1, K)


class GridQueries(nn.Module):
    """Fourier features of output grid points chosen by flat index, at DeepMind's subsampled-point positions
    -1 + 2 i / N per axis.

    Args:
        index_dims: the output grid, e.g. (T, H, W) pixels or (S / 16,) audio patches.
        num_bands: Fourier bands per axis.
        max_resolution: per-axis resolution setting the top frequency (res / 2).
    """

    def __init__(self, index_dims: Sequence[int], num_bands: int, max_resolution: Sequence[int]):
        super().__init__()
        self.index_dims, self.num_bands = tuple(int(d) for d in index_dims), num_bands
        self.max_resolution = tuple(float(r) for r in max_resolution)
        self.num_channels = num_fourier_channels(len(self.index_dims), num_bands)
        self.num_queries = 1
        for d in self.index_dims:
            self.num_queries *= d

    def forward(self, indices: Tensor, dtype: torch.dtype) -> Tensor:
        """indices (Q,) or (B, Q) -> features (Q, C) or (B, Q, C)."""
        dims = torch.tensor(self.index_dims, device=indices.device)
        coords = torch.stack(torch.unravel_index(indices, self.index_dims), dim=-1)  # (..., Q, d)
        pos = -1 + 2 * coords / dims  # float32
        return fourier_features(pos, [r / 2 for r in self.max_resolution], self.num_bands).to(dtype)


# HF's / DeepMind's multimodal autoencoder in our names (declared once, in hf_names.HF_CONFIGS): the defaults below.
_AE_RELEASE = released("multimodal_autoencoding", (*DENSE_NAMES, ("output_num_channels", "decoder_output_channels")))


class PerceiverIOMultimodalAutoencoder(LatentEncoderModel):
    """Video + audio + label autoencoder through the latent bottleneck (see the module docstring).

    The defaults are HF's / DeepMind's model (784 x 512 latents, 8 self-attends of 8 heads). The encoder's
    arguments (num_latents ... activation_checkpointing) are documented on LatentEncoderModel.

    Args:
        adapter: a MultimodalAdapter with modalities "video" (VideoAdapter, patch (1, ph, pw)), "audio" (raw
            AudioAdapter) and "label" (OneHotAdapter).
        decoder_num_heads: heads of the shared decoder cross-attention.
        decoder_output_channels: width of the decoder's projection before the modality postprocessors (512).
        video_query_bands: Fourier bands of the video queries (max resolution: the video's (T, H, W), as the
            encoder's).
        audio_query_bands: Fourier bands of the audio queries (max resolution: the audio's sample count).
        label_query_channels: width of the label's learned query (1024).
        query_padding_size: the queries' common width is the widest modality's + this (2).
        mask_probs: {modality: p}: each of its elements is replaced by the modality's learned mask token with
            probability p (p >= 1: always, also in eval; 0 < p < 1: in training only). null: the official
            {"label": 1.0}.

    forward(inputs, query_indices=None, masked=()) -> {"video": (B, T, H, W, 3), "audio": (B, S), "label": (B, K)};
    with query_indices {"video": (Q,) or (B, Q), "audio": ...} the subsampled modalities are (B, Q, 3) and
    (B, Q * 16). `masked`: modalities whose every element is replaced by its mask token in this call, on top of
    mask_probs (the paper masks the label in eval and trains with it masked half of the time: `mask_probs
    {"label": 0.5}` in training, `masked=("label",)` in eval; tasks/autoencoding.py).
    """

    MODALITIES = ("audio", "label", "video")

    def __init__(
        self,
        adapter: MultimodalAdapter,
        num_latents: int = _AE_RELEASE["num_latents"],
        latent_dim: int = _AE_RELEASE["latent_dim"],
        num_self_attends: int = _AE_RELEASE["num_self_attends"],
        num_self_attention_heads: int = _AE_RELEASE["num_self_attention_heads"],
        num_cross_attention_heads: int = _AE_RELEASE["num_cross_attention_heads"],
        cross_attention_widening_factor: int = 1,
        self_attention_widening_factor: int = 1,
        decoder_num_heads: int = 1,
        decoder_output_channels: int = _AE_RELEASE["decoder_output_channels"],
        video_query_bands: int = 32,
        audio_query_bands: int = 192,
        label_query_channels: int = 1024,
        query_padding_size: int = 2,
        mask_probs: Mapping[str, float] | None = None,
        decode_chunk_size: int | None = 8192,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        mask_probs = {"label": 1.0} if mask_probs is None else dict(mask_probs)
        self.config = record(MultimodalAutoencoderConfig, locals())
        if tuple(adapter.names) != self.MODALITIES:
            raise ValueError(
                f"PerceiverIOMultimodalAutoencoder: the adapter's modalities must be "
                f"{list(self.MODALITIES)}, got {adapter.names}"
            )
        bad = set(mask_probs) - set(self.MODALITIES)
        if bad:
            raise ValueError(f"PerceiverIOMultimodalAutoencoder: mask_probs names unknown modalities {sorted(bad)}")
        ckpt, c = activation_checkpointing, adapter.num_output_channels
        video, audio, label = (adapter.adapters[n] for n in ("video", "audio", "label"))
        if getattr(audio, "mel", True):
            raise ValueError("PerceiverIOMultimodalAutoencoder: audio must be a raw-waveform AudioAdapter, input (S,)")
        self.adapter = adapter
        self.num_classes = label.num_output_channels
        self.samples_per_patch = audio.samples_per_patch
        self.video_shape = tuple(g * p for g, p in zip(video.grid, video.patch_size))  # (T, H, W)
        patch = video.patch_size[0] * video.patch_size[1] * video.patch_size[2]
        self.video_channels = (video.num_output_channels - video.pos.num_channels) // patch  # 3
        self.queries = nn.ModuleDict(
            {
                "video": GridQueries(self.video_shape, video_query_bands, video.pos.max_resolution or self.video_shape),
                "audio": GridQueries(
                    audio.grid,
                    audio_query_bands,
                    audio.pos.max_resolution or (audio.grid[0] * audio.samples_per_patch,),
                ),
            }
        )
        self.label_query = nn.Parameter(trunc_normal_(torch.empty(1, label_query_channels), 0.02))
        widths = {
            "video": self.queries["video"].num_channels,
            "audio": self.queries["audio"].num_channels,
            "label": label_query_channels,
        }
        self.query_channels = max(widths.values()) + query_padding_size
        self.query_padding = nn.ParameterDict(
            {n: nn.Parameter(trunc_normal_(torch.empty(self.query_channels - w), 0.02)) for n, w in widths.items()}
        )
        # A learned mask token per modality (HF has one for each modality it lists in mask_probs: all three).
        self.mask_tokens = nn.ParameterDict(
            {n: nn.Parameter(trunc_normal_(torch.empty(c), 0.02)) for n in self.MODALITIES}
        )
        self._init_encoder(c, self.config)  # latents, encoder, processor
        self.decoder = DenseDecoder(
            self.query_channels,
            latent_dim,
            decoder_output_channels,
            decoder_num_heads,
            use_query_residual=False,
            chunk_size=decode_chunk_size,
            dropout=dropout,
            checkpoint=ckpt,
        )
        self.heads = nn.ModuleDict(
            {
                "audio": nn.Linear(decoder_output_channels, self.samples_per_patch),
                "label": nn.Linear(decoder_output_channels, self.num_classes),
                "video": nn.Linear(decoder_output_channels, self.video_channels),
            }
        )
        self.apply(init_linear_)

    @classmethod
    def from_config(
        cls, adapter: MultimodalAdapter, config: MultimodalAutoencoderConfig
    ) -> PerceiverIOMultimodalAutoencoder:
        return cls(adapter=adapter, **asdict(config))

    def num_queries(self, modality: str) -> int:
        """Output elements of a modality: video pixels T*H*W, audio patches S/16, label 1."""
        return 1 if modality == "label" else self.queries[modality].num_queries

    def _mask(self, x: Tensor, masked: Sequence[str] = ()) -> Tensor:
        """Replace elements of (B, M, C) by their modality's mask token (mask_probs, and every element of the
        `masked` modalities), in the adapter's order."""
        start, parts = 0, []
        for n in self.adapter.names:
            m = self.adapter.adapters[n].num_elements
            part, p = x[:, start : start + m], self.config.mask_probs.get(n, 0.0)
            token = self.mask_tokens[n].to(x.dtype)
            if p >= 1 or n in masked:
                part = token.expand_as(part)
            elif p > 0 and self.training:
                drop = torch.rand(part.shape[:2], device=x.device) < p  # (B, m)
                part = torch.where(drop[..., None], token, part)
            parts.append(part)
            start += m
        return torch.cat(parts, dim=1)  # (B, M, C)

    def _make_queries(self, modality: str, batch_size: int, dtype: torch.dtype):
        pad = self.query_padding[modality].to(dtype)

        def make(indices: Tensor) -> Tensor:  # -> (B, Q, C)
            if modality == "label":
                q = self.label_query.to(dtype)[indices.clamp(max=0)]  # (..., Q, 1024)
            else:
                q = self.queries[modality](indices, dtype)  # (..., Q, C_m)
            q = q.expand(batch_size, -1, -1) if q.ndim == 2 else q
            return torch.cat([q, pad.expand(*q.shape[:2], -1)], dim=-1)

        return make

    def forward(
        self,
        inputs: Mapping[str, Tensor],
        query_indices: Mapping[str, Tensor] | None = None,
        masked: Sequence[str] = (),
    ) -> dict[str, Tensor]:
        bad = set(masked) - set(self.MODALITIES)
        if bad:
            raise ValueError(f"PerceiverIOMultimodalAutoencoder: masked names unknown modalities {sorted(bad)}")
        x, mask = self.adapter(inputs)  # (B, M, C)
        x = self._mask(x, masked)
        B = x.shape[0]
        z = self.processor(self.encoder(self.latents.expand(B, -1, -1), x, mask))  # (B, N, D)
        query_indices = dict(query_indices or {})
        bad = set(query_indices) - {"video", "audio"}
        if bad:
            raise ValueError(
                f"PerceiverIOMultimodalAutoencoder: query_indices for {sorted(bad)}; only 'video' and "
                "'audio' are subsampled"
            )
        out = {}
        for n in self.MODALITIES:
            idx = query_indices.get(n)
            # the modality's head per decode chunk: (B, Q, 512) is never held for all queries
            y = self.decoder(
                z, self._make_queries(n, B, x.dtype), self.num_queries(n), idx, postprocess=self.heads[n]
            )  # (B, Q, K_n)
            if n == "label":
                out[n] = y[:, 0]  # (B, K)
            elif n == "audio":
                out[n] = y.reshape(B, -1)  # (B, Q * 16)
            else:
                out[n] = y if idx is not None else y.view(B, *self.video_shape, -1)  # (B, T, H, W, 3)
        return out

    def decode_flops(self) -> int:
        """Forward FLOPs per sample of decoding every output: the shared cross-attend per modality (k, v of the
        latents projected once per modality) and the postprocessors."""
        n, flops = self.config.num_latents, 0
        for name in self.MODALITIES:
            q, head = self.num_queries(name), self.heads[name]
            flops += self.decoder.flops(q, n, postprocess=head)
        return flops

    def flops_per_sample(self) -> int:
        """Analytic forward FLOPs (2 x multiply-adds of the matmuls) for one sample, every output decoded."""
        n, m = self.config.num_latents, self.adapter.num_elements
        return self.encoder.flops(n, m, expanded_queries=True) + self.processor.flops(n) + self.decode_flops()

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self) | {"label_query"}  # a learned query


MultimodalAutoencoderConfig = config_class(PerceiverIOMultimodalAutoencoder, "MultimodalAutoencoderConfig")
