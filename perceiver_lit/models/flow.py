"""Perceiver IO optical flow (Jaegle et al. 2021, Sec. 4.2): exactly HF's PerceiverForOpticalFlow / DeepMind's model.

    frames (B, 2, H, W, 3) --3x3 patches of both frames (54 ch) -> Linear(54 -> 64)--> (B, HW, 64)
        + Fourier features of the pixel grid (64 bands, max resolution = the training size) -> (B, HW, 322)
    latents (2048, 512) --cross-attend--> 24 self-attends (16 heads)
    queries = the encoder inputs at each output pixel (features joined with the Fourier features of its position)
        --DenseDecoder (1 head, no query residual) -> Linear(322 -> 2)--> / 100 -> flow (B, H, W, 2)

HF's model takes the frames already cut into patches, (B, 2, 27, H, W) (`extract_patches`); ours takes the frames
and does patching and the Linear in one 3x3 convolution over the 6 stacked channels (the same weights, rearranged):
the (B, H, W, 54) patch array is never built.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import InputAdapter, PadMask
from .decoders import DenseDecoder, take_rows
from .hf_names import DENSE_NAMES, released
from .hparams import config_class, record
from .latent_encoder import LatentEncoderModel
from .param_groups import no_weight_decay_names
from .position import FourierPositionEncoding
from .weight_init import init_linear_


def extract_patches(frames: Tensor, patch_size: int = 3) -> Tensor:
    """Frames (B, T, H, W, C) -> HF's / DeepMind's flow input (B, T, p*p*C, H, W): each pixel's p x p neighbourhood
    (zero "SAME" padding), channels ordered (row, column, colour) as TF's extract_image_patches.

    Args:
        frames: channels-last frames, e.g. (B, 2, H, W, 3).
        patch_size: odd window side (3 for the official model).
    """
    B, T, H, W, C = frames.shape
    p, r = patch_size, patch_size // 2
    x = F.pad(frames.permute(0, 1, 4, 2, 3).reshape(B * T, C, H, W), (r, r, r, r))  # (BT, C, H+2r, W+2r)
    patches = x.unfold(2, p, 1).unfold(3, p, 1)  # (BT, C, H, W, p, p)
    return patches.permute(0, 4, 5, 1, 2, 3).reshape(B, T, p * p * C, H, W)


class FlowPatchAdapter(InputAdapter):
    """Two frames (B, 2, H, W, C) -> (B, HW, num_channels + P): HF's PerceiverImagePreprocessor with prep_type
    "patches", temporal_downsample 2, conv_after_patching, Fourier positions concatenated.

    Args:
        input_shape: (2, H, W, C) per sample.
        patch_size: side of each pixel's patch (3).
        num_channels: width of the Linear after patching (HF's out_channels, 64).
        num_frequency_bands: Fourier bands per axis (64).
        max_resolution: (H, W) that sets the top frequency: the training size (368, 496); defaults to (H, W).
        correlation_radius: 0 (DeepMind's model): none. r > 0: also give each pixel its matching cost against frame
            2's pixels displaced by up to r in each axis, (2r + 1)^2 channels (a cost volume, as PWC-Net and RAFT).
            Not in the paper, and no HF class has it: an addition for small models trained briefly, which cannot
            learn matching from 3x3 patches in minutes (docs/training.md, "Optical flow").
        correlation_window: with correlation_radius > 0, average each displacement's cost over a k x k window of
            frame-1 pixels (odd k; 1: each pixel's own cost). Block matching: one pixel's colour matches many
            displaced pixels, a window's texture matches few.
        correlation_estimate: with correlation_radius > 0, also give each pixel its block-matching result (3
            channels): the best displacement's cost (0: a perfect match), then the flow estimate (dx, dy) / r, the
            best displacement refined to sub-pixel by a parabola through its neighbours in each axis. A fixed
            function of the frames, like the cost: a linear layer cannot take an argmin of the cost channels.
        correlation_volume: with correlation_radius > 0, give the (2r+1)^2 cost channels themselves (True); False
            keeps only the estimate (needs correlation_estimate): each element is 3 channels wide instead of
            (2r+1)^2 + 3, which halves the small local model's training step.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        patch_size: int = 3,
        num_channels: int = 64,
        num_frequency_bands: int = 64,
        max_resolution: Sequence[int] | None = None,
        correlation_radius: int = 0,
        correlation_window: int = 1,
        correlation_estimate: bool = False,
        correlation_volume: bool = True,
    ):
        super().__init__()
        if len(input_shape) != 4 or input_shape[0] != 2:
            raise ValueError(f"FlowPatchAdapter: input_shape must be (2, H, W, C), got {tuple(input_shape)}")
        if patch_size % 2 != 1:
            raise ValueError(f"FlowPatchAdapter: patch_size must be odd, got {patch_size}")
        if correlation_radius < 0:
            raise ValueError(f"FlowPatchAdapter: correlation_radius must be >= 0, got {correlation_radius}")
        if correlation_window < 1 or correlation_window % 2 != 1:
            raise ValueError(f"FlowPatchAdapter: correlation_window must be odd and >= 1, got {correlation_window}")
        t, h, w, c = input_shape
        self.input_shape, self.patch_size, self.in_channels = tuple(input_shape), patch_size, c
        # HF's conv_after_patches: Linear over the (frame, row, column, colour) patch vector.
        self.patch_proj = nn.Linear(t * patch_size * patch_size * c, num_channels)
        self.pos = FourierPositionEncoding(2, num_frequency_bands, max_resolution or (h, w))
        self.correlation_radius, self.correlation_window = correlation_radius, correlation_window
        self.correlation_estimate = bool(correlation_estimate) and correlation_radius > 0
        self.correlation_volume = bool(correlation_volume) and correlation_radius > 0
        if correlation_radius > 0 and not (self.correlation_volume or self.correlation_estimate):
            raise ValueError(
                "FlowPatchAdapter: correlation_volume: false needs correlation_estimate: true (else the matching "
                "cost gives the model nothing)"
            )
        num_cost = (2 * correlation_radius + 1) ** 2 * self.correlation_volume
        self.num_features = num_channels + num_cost + 3 * self.correlation_estimate
        self.num_output_channels = self.num_features + self.pos.num_channels
        self.num_elements = h * w

    def conv_weight(self) -> Tensor:
        """patch_proj's weight as a 3-D conv kernel over the stacked frames: (out, 2 * C, p, p)."""
        p, c = self.patch_size, self.in_channels
        w = self.patch_proj.weight.view(-1, 2, p, p, c)  # (out, t, row, col, colour)
        return w.permute(0, 1, 4, 2, 3).reshape(w.shape[0], 2 * c, p, p)

    def features(self, frames: Tensor) -> Tensor:
        """(B, 2, H, W, C) -> (B, HW, num_channels): patching + Linear, as one convolution."""
        B, T, H, W, C = frames.shape
        x = frames.permute(0, 1, 4, 2, 3).reshape(B, T * C, H, W)  # (B, 2C, H, W)
        x = F.conv2d(x, self.conv_weight(), self.patch_proj.bias, padding=self.patch_size // 2)  # (B, out, H, W)
        x = x.flatten(2).transpose(1, 2)  # (B, HW, out)
        if not self.correlation_radius:
            return x
        cost = self.correlation(frames)  # (B, HW, k^2)
        parts = [x] + [cost] * self.correlation_volume + [self.estimate(cost)] * self.correlation_estimate
        return torch.cat(parts, dim=-1)

    def correlation(self, frames: Tensor) -> Tensor:
        """(B, 2, H, W, C) -> (B, HW, (2r+1)^2): minus the mean over colour of the squared difference between frame
        1's pixel and frame 2's pixel at each displacement (dy, dx) in [-r, r]^2 (row-major; frame 2 is zero outside
        its borders). Each frame is standardised first (zero mean, unit variance over its pixels), so the cost does
        not depend on brightness or contrast. A squared difference, not a product: a product favours bright pixels
        over the matching one (measured: a per-pixel MLP on products reached 0.90 of the zero-flow EPE, on squared
        differences 0.75)."""
        B, T, H, W, C = frames.shape
        r, k = self.correlation_radius, 2 * self.correlation_radius + 1
        x = frames.permute(0, 1, 4, 2, 3)  # (B, 2, C, H, W)
        x = (x - x.mean(dim=(2, 3, 4), keepdim=True)) / x.std(dim=(2, 3, 4), keepdim=True).clamp(min=1e-3)
        window = F.unfold(x[:, 1], k, padding=r).view(B, C, k * k, H * W)  # frame 2 around each pixel
        diff = x[:, 0].reshape(B, C, 1, H * W) - window  # (B, C, k^2, HW)
        cost = (diff * diff).mean(1)  # (B, k^2, HW)
        if self.correlation_window > 1:  # block matching: the cost summed over a window of frame-1 pixels
            q = self.correlation_window
            cost = cost.view(B, k * k, H, W)  # separable: rows, then columns (the same mean, 2q adds, not q^2)
            cost = F.avg_pool2d(cost, (q, 1), 1, (q // 2, 0), count_include_pad=False)
            cost = F.avg_pool2d(cost, (1, q), 1, (0, q // 2), count_include_pad=False).flatten(2)
        return -cost.transpose(1, 2)  # (B, HW, k^2)

    def estimate(self, neg_cost: Tensor) -> Tensor:
        """(B, HW, (2r+1)^2) minus costs -> (B, HW, 3): the best displacement's cost, then (dx, dy) / r, the best
        displacement with each axis refined by the parabola through the cost there and at its two neighbours
        (clamped to half a pixel)."""
        r, k = self.correlation_radius, 2 * self.correlation_radius + 1
        cost = -neg_cost.unflatten(-1, (k, k))  # (B, HW, dy, dx)
        best = cost.flatten(2).argmin(-1)  # (B, HW)
        iy, ix = best // k, best % k
        pad = F.pad(cost, (1, 1, 1, 1), value=float("inf"))  # neighbours outside the window never win
        flat = pad.flatten(2)

        def at(dy: int, dx: int) -> Tensor:
            return flat.gather(2, ((iy + 1 + dy) * (k + 2) + ix + 1 + dx).unsqueeze(-1)).squeeze(-1)

        def vertex(lo: Tensor, mid: Tensor, hi: Tensor) -> Tensor:
            curve = lo - 2 * mid + hi
            ok = torch.isfinite(curve) & (curve > 1e-6)
            return torch.where(ok, (lo - hi) / (2 * curve).clamp(min=1e-6), 0.0).clamp(-0.5, 0.5)

        c0 = at(0, 0)
        dx = ix - r + vertex(at(0, -1), c0, at(0, 1))
        dy = iy - r + vertex(at(-1, 0), c0, at(1, 0))
        return torch.stack([c0, dx / r, dy / r], dim=-1).to(neg_cost.dtype)

    def estimated_flow(self, x: Tensor) -> Tensor:
        """This adapter's output (B, M, C) -> its block-matching flow (B, M, 2) in pixels: (dx, dy) / r end the
        features, before the positions."""
        f = self.num_features
        return x[..., f - 2 : f] * self.correlation_radius

    def forward(self, frames: Tensor, pad_mask: PadMask = None) -> tuple[Tensor, PadMask]:
        if frames.ndim != 5 or frames.shape[1] != 2:
            raise ValueError(f"FlowPatchAdapter: frames must be (B, 2, H, W, C), got {tuple(frames.shape)}")
        H, W = frames.shape[2:4]
        x = self.features(frames)  # (B, HW, 64)
        pos = self.pos((H, W), x.device, x.dtype).expand(x.shape[0], -1, -1)  # (B, HW, P)
        return torch.cat([x, pos], dim=-1), pad_mask  # (B, HW, 64 + P)

    def flops(self) -> int:  # the matmuls' (the correlation is elementwise, as FlopCounterMode counts)
        return 2 * self.num_elements * self.patch_proj.in_features * self.patch_proj.out_features


# HF's / DeepMind's flow model in our names (declared once, in hf_names.HF_CONFIGS): PerceiverIOFlow's defaults.
_FLOW_RELEASE = released("optical_flow", DENSE_NAMES)


class PerceiverIOFlow(LatentEncoderModel):
    """Optical flow from two frames: adapter -> cross-attend -> self-attends -> dense decoder -> flow.

    The defaults are HF's / DeepMind's model (2048 x 512 latents, 24 self-attends of 16 heads). The encoder's
    arguments (num_latents ... activation_checkpointing) are documented on LatentEncoderModel.

    Args:
        adapter: FlowPatchAdapter (its output is both the encoder input and the decoder queries).
        decoder_num_heads: heads of the decoder's cross-attention (1).
        decoder_widening_factor: the decoder MLP's hidden width / the query channels (1).
        output_channels: channels of each output pixel: 2 (u, v).
        rescale_factor: the decoder's output is divided by it (HF / DeepMind: 100).
        decoder_query_residual: add the decoder's attention output to its queries, so each pixel's own features
            reach its output directly (HF / DeepMind: False; True suits `correlation_radius`).
        estimate_residual: add the adapter's block-matching estimate (`correlation_estimate`, in pixels) to the
            decoder's output before `rescale_factor` divides it, so the decoder learns a correction to block
            matching instead of first learning to copy it (RAFT refines an initial flow the same way). The estimate
            is then in the task's pixels when rescale_factor equals the task's flow_scale (the task checks).

    forward(frames (B, 2, H, W, C), query_indices=None) -> flow (B, H, W, 2); with query_indices ((Q,) or (B, Q)
    flat pixel indices, row-major) only those pixels are decoded: (B, Q, 2).
    """

    def __init__(
        self,
        adapter: FlowPatchAdapter,
        num_latents: int = _FLOW_RELEASE["num_latents"],
        latent_dim: int = _FLOW_RELEASE["latent_dim"],
        num_self_attends: int = _FLOW_RELEASE["num_self_attends"],
        num_self_attention_heads: int = _FLOW_RELEASE["num_self_attention_heads"],
        num_cross_attention_heads: int = _FLOW_RELEASE["num_cross_attention_heads"],
        cross_attention_widening_factor: int = 1,
        self_attention_widening_factor: int = 1,
        decoder_num_heads: int = 1,
        decoder_widening_factor: int = 1,
        output_channels: int = 2,
        rescale_factor: float = 100.0,
        decoder_query_residual: bool = False,
        estimate_residual: bool = False,
        decode_chunk_size: int | None = 8192,
        dropout: float = 0.0,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        if estimate_residual and not getattr(adapter, "correlation_estimate", False):
            raise ValueError(
                "PerceiverIOFlow: estimate_residual needs the adapter's block-matching estimate "
                "(FlowPatchAdapter correlation_radius > 0 and correlation_estimate: true)"
            )
        self.config = record(PerceiverIOFlowConfig, locals())
        ckpt = activation_checkpointing
        c = adapter.num_output_channels
        self.adapter = adapter
        self._init_encoder(c, self.config)  # latents, encoder, processor
        self.decoder = DenseDecoder(
            c,
            latent_dim,
            output_channels,
            decoder_num_heads,
            widening_factor=decoder_widening_factor,
            use_query_residual=decoder_query_residual,
            chunk_size=decode_chunk_size,
            dropout=dropout,
            checkpoint=ckpt,
        )
        self.apply(init_linear_)

    @classmethod
    def from_config(cls, adapter: FlowPatchAdapter, config: PerceiverIOFlowConfig) -> PerceiverIOFlow:
        return cls(adapter=adapter, **asdict(config))

    def forward(self, frames: Tensor, query_indices: Tensor | None = None) -> Tensor:
        x, _ = self.adapter(frames)  # (B, HW, C); checks the shape
        B, _, H, W, _ = frames.shape
        z = self.encoder(self.latents.expand(B, -1, -1), x)  # (B, N, D)
        z = self.processor(z)  # (B, N, D)
        # The queries are the encoder inputs at the output pixels (features + Fourier positions).
        out = self.decoder(z, lambda idx: take_rows(x, idx), H * W, query_indices)  # (B, Q, 2)
        if self.config.estimate_residual:
            est = self.adapter.estimated_flow(x)  # (B, HW, 2) pixels
            out = out + (est if query_indices is None else take_rows(est, query_indices))
        out = out / self.config.rescale_factor
        return out.view(B, H, W, -1) if query_indices is None else out

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self)

    def flops_per_sample(self) -> int:
        """Analytic forward FLOPs (2 x multiply-adds of the matmuls) for one sample at the adapter's shape."""
        n, m = self.config.num_latents, self.adapter.num_elements
        return (
            self.adapter.flops()
            + self.encoder.flops(n, m, expanded_queries=True)
            + self.processor.flops(n)
            + self.decoder.flops(m, n)
        )


PerceiverIOFlowConfig = config_class(PerceiverIOFlow)
