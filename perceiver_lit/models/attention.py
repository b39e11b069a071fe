"""Perceiver building blocks: cross-attention and latent self-attention layers (pre-LN, SDPA).

A layer is  x = attn(LN(x), LN(inputs)) [+ x]  then  x = x + MLP(LN(x)),  as in Perceiver / Perceiver IO.
All attention goes through torch.nn.functional.scaled_dot_product_attention (sdpa.py chooses its kernel; the
initialisers are in weight_init.py). Self-attention fuses q, k, v
into one projection; cross-attention fuses k and v (they read the same inputs). `convert.py` splits / joins
HF's separate weights accordingly.

Cross-attention over many inputs and few queries (the encoder: N latents << M inputs) runs "absorbed": the
k and v projections are moved onto the query side, so nothing is projected over the M inputs (see
`CrossAttentionLayer.absorbs`). Same function, same parameters; `flops(...)` counts what actually runs.

FLOPs (`flops(...)`) count 2 x multiply-adds of every matmul (projections, QK^T, AV, MLP); norms, softmax,
GELU and residual adds are left out, as in the papers' counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .checks import check_sizes
from .hparams import declared_defaults
from .sdpa import attend_unprojected, attention


def head_channels(
    owner: str, default: int, num_heads: int, qk_channels: int | None, v_channels: int | None
) -> tuple[int, int]:
    """(qk_channels, v_channels) of an attention layer: qk_channels defaults to `default` (the "kv" shape: the
    inputs' width), v_channels to qk_channels; each must split evenly into num_heads heads."""
    qk_channels = qk_channels or default
    v_channels = v_channels or qk_channels
    if qk_channels % num_heads or v_channels % num_heads:
        raise ValueError(
            f"{owner}: qk_channels {qk_channels} / v_channels {v_channels} not divisible by num_heads {num_heads}"
        )
    return qk_channels, v_channels


class MLP(nn.Sequential):
    """Linear(dim -> widening * dim) -> GELU -> Linear(-> dim)."""

    def __init__(self, dim: int, widening_factor: int = 1, dropout: float = 0.0):
        super().__init__(
            nn.Linear(dim, widening_factor * dim), nn.GELU(), nn.Linear(widening_factor * dim, dim), nn.Dropout(dropout)
        )


class _Layer(nn.Module):
    """Shared part of both layers: their size checks and head widths, the output projection, the MLP residual,
    dropout and the activation-checkpointing switch.

    Its Args: are the arguments both layers take alike (jsonargparse reads a base class's Args: for a subclass).

    Args:
        num_heads: attention heads; qk_channels and v_channels must be divisible by it.
        v_channels: v width; None: qk_channels.
        dropout: on the attention probabilities and the residual branches.
        checkpoint: recompute the layer's activations in backward (activation checkpointing).
    """

    checkpoint: bool

    def _init_heads(
        self,
        default_qk: int,
        num_heads: int,
        qk_channels: int | None,
        v_channels: int | None,
        widening_factor: int,
        **dims: int,
    ) -> None:
        """Check the sizes (the layer's `dims` first), set num_heads, qk_channels and v_channels (head_channels)."""
        owner = type(self).__name__
        check_sizes(
            owner,
            **dims,
            num_heads=num_heads,
            qk_channels=qk_channels,
            v_channels=v_channels,
            widening_factor=widening_factor,
        )
        self.num_heads = num_heads
        self.qk_channels, self.v_channels = head_channels(owner, default_qk, num_heads, qk_channels, v_channels)

    def _init_output(self, dim: int, widening_factor: int, dropout: float) -> None:
        """After the q/k/v projections: the output projection (v_channels -> dim), its dropout and the MLP."""
        self.proj = nn.Linear(self.v_channels, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, widening_factor, dropout)

    def forward(self, *args, **kwargs) -> Tensor:
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, *args, use_reentrant=False, **kwargs)
        return self._forward(*args, **kwargs)

    def _mlp_residual(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm_mlp(x))


class CrossAttentionLayer(_Layer):
    """Queries x (B, N, q_dim) attend to inputs (B, M, kv_dim); output (B, N, q_dim).

    Args:
        q_dim: channels of the queries (and of the output).
        kv_dim: channels of the inputs.
        qk_channels: q/k width; None: kv_dim (DeepMind's "kv" shape for attention).
        widening_factor: the MLP's hidden width / q_dim.
        use_query_residual: add the attention output to the queries; False drops that residual (decoders whose
            queries are positions, not outputs).
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        dropout: float = 0.0,
        use_query_residual: bool = True,
        checkpoint: bool = False,
    ):
        super().__init__()
        self._init_heads(kv_dim, num_heads, qk_channels, v_channels, widening_factor, q_dim=q_dim, kv_dim=kv_dim)
        self.use_query_residual, self.dropout, self.checkpoint = use_query_residual, dropout, checkpoint
        self.absorb: bool | None = None  # see absorbs(); None: by cost
        self.norm_q = nn.LayerNorm(q_dim)
        self.norm_kv = nn.LayerNorm(kv_dim)
        self.to_q = nn.Linear(q_dim, self.qk_channels)
        self.to_kv = nn.Linear(kv_dim, self.qk_channels + self.v_channels)  # fused [k; v]
        self._init_output(q_dim, widening_factor, dropout)

    def _forward(
        self,
        x: Tensor,
        inputs: Tensor | None,
        pad_mask: Tensor | None = None,
        kv: Tensor | None = None,
        return_kv: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, N, q_dim), inputs (B, M, kv_dim) -> (B, N, q_dim).

        kv / return_kv: a layer applied again to the same inputs (the Perceiver's shared cross-attends) can
        reuse what it computed from the inputs alone, instead of recomputing it over all M inputs: the projected
        [k; v] (B, M, Cqk + Cv), or, when the layer absorbs the projections, the normalised inputs (B, M, kv_dim).
        """
        num_inputs = (inputs if kv is None else kv).shape[1]
        if self.absorbs(x.shape[1], num_inputs):
            if kv is None:
                kv = self.normalize_inputs(inputs)  # (B, M, kv_dim)
            a = self._absorbed_attention(x, kv, pad_mask)  # (B, N, Cv)
        else:
            if kv is None:
                kv = self.project_kv(inputs)  # (B, M, Cqk + Cv)
            a = self.attend(x, kv, pad_mask)  # (B, N, Cv)
        a = self.proj_drop(self.proj(a))  # (B, N, q_dim)
        x = x + a if self.use_query_residual else a
        x = self._mlp_residual(x)
        return (x, kv) if return_kv else x

    def attend(self, x: Tensor, kv: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        """The projected path's attention, before the output projection: queries x (B, N, q_dim) and the inputs'
        projected [k; v] (B, M, Cqk + Cv) (`project_kv`) -> (B, N, Cv)."""
        k, v = kv.split([self.qk_channels, self.v_channels], dim=-1)
        q = self.to_q(self.norm_q(x))  # (B, N, Cqk)
        return attention(q, k, v, self.num_heads, pad_mask, self.dropout if self.training else 0.0)

    def absorbs(self, num_queries: int, num_inputs: int) -> bool:
        """Whether to run attention on the normalised inputs with k and v's projections moved to the query side:

            q_h k_h^T = (q_h W_k,h) x_hat^T + q_h . b_k,h    the bias term is one constant per query row, which
                                                             softmax ignores;
            P_h v_h   = (P_h x_hat) W_v,h^T + b_v,h           the rows of P sum to 1.

        Exact in value and gradient (up to float rounding; tested), with the same parameters. It replaces the
        (M x kv_dim x (Cqk + Cv)) projection of every input with per-query work, and needs no key or value
        gradients in backward. It pays when queries are few and heads are few: the paper's encoder (1 head, the
        "kv" shape, N latents << M inputs) always; a decoder with as many queries as outputs never. `absorb`
        (None: by the forward multiply-add count below; True / False: forced) chooses. Not with attention
        dropout in training (dropped probabilities no longer sum to 1).
        """
        if self.training and self.dropout > 0:
            return False
        if self.absorb is not None:
            return self.absorb
        return self._absorbed_macs(num_queries, num_inputs) < self._projected_macs(num_queries, num_inputs)

    def _projected_macs(self, n: int, m: int, project_kv: bool = True) -> int:
        """Forward multiply-adds per sample of the projected path, less what both paths share (q, output
        projection, MLP): k and v of every input, QK^T, AV."""
        c = self.qk_channels + self.v_channels
        return m * self.to_kv.in_features * c * project_kv + n * m * c

    def _absorbed_macs(self, n: int, m: int) -> int:
        """... of the absorbed path: q W_k, (q W_k) x_hat^T and P x_hat per head, then W_v."""
        kv_dim = self.to_kv.in_features
        return n * self.qk_channels * kv_dim + 2 * self.num_heads * n * m * kv_dim + n * kv_dim * self.v_channels

    def normalize_inputs(self, inputs: Tensor) -> Tensor:
        """norm_kv without its affine (folded into the weights), in the autocast dtype when autocast is on; on
        CUDA zero-padded to a multiple of 8 channels, so that SDPA can take a fused kernel (zeros add nothing)."""
        x_hat = F.layer_norm(inputs, self.norm_kv.normalized_shape, None, None, self.norm_kv.eps)
        device = inputs.device.type
        if device != "meta" and torch.is_autocast_enabled(device):
            x_hat = x_hat.to(torch.get_autocast_dtype(device))
        return F.pad(x_hat, (0, -x_hat.shape[-1] % 8)) if x_hat.is_cuda and x_hat.shape[-1] % 8 else x_hat

    def _folded_kv_weights(self) -> tuple[Tensor, Tensor | None]:
        """to_kv's weight and bias with norm_kv's affine folded in (see project_kv)."""
        ln, lin = self.norm_kv, self.to_kv
        weight = lin.weight if ln.weight is None else lin.weight * ln.weight  # (Cqk + Cv, kv_dim)
        bias = lin.bias
        if ln.bias is not None:
            bias = lin.weight @ ln.bias if bias is None else torch.addmv(bias, lin.weight, ln.bias)
        return weight, bias

    def _absorbed_attention(self, x: Tensor, x_hat: Tensor, pad_mask: Tensor | None) -> Tensor:
        """attention(q, k, v) (B, N, Cv) from the normalised inputs x_hat (B, M, C) without projecting them to k, v
        (`absorbs`): scores (q_h W_k,h) x_hat^T, then (P_h x_hat) W_v,h^T + b_v,h."""
        B, N, _ = x.shape
        h, C = self.num_heads, self.to_kv.in_features
        dqk, dv = self.qk_channels // h, self.v_channels // h
        weight, bias = self._folded_kv_weights()
        w_k, w_v = weight.split([self.qk_channels, self.v_channels])  # (Cqk, C), (Cv, C)
        w_k = F.pad(w_k.view(h, dqk, C), (0, x_hat.shape[-1] - C))  # (h, dqk, C [+ CUDA padding])
        # The latents expanded over the batch (the first cross-attend) are the same queries for every sample:
        # project them once. einsum, not a broadcast matmul: the weights' gradients then come from one matmul per
        # head, not from a (B x ...) batch of outer products summed afterwards.
        rows = x[:1] if B > 1 and x.stride(0) == 0 else x  # (1 or B, N, q_dim)
        q = self.to_q(self.norm_q(rows)).view(rows.shape[0], N, h, dqk)  # (1 or B, N, h, dqk)
        q = torch.einsum("bnhd,hdc->bhnc", q, w_k).expand(B, -1, -1, -1)  # (B, h, N, C)
        o = attend_unprojected(q, x_hat, dqk**-0.5, pad_mask)[..., :C]  # (B, h, N, C)
        b_v = None if bias is None else bias[self.qk_channels :]  # b_k drops out (softmax)
        v = torch.einsum("bhnc,hdc->bnhd", o, w_v.view(h, dv, C)).reshape(B, N, -1)  # (B, N, Cv)
        return v if b_v is None else v + b_v

    def project_kv(self, inputs: Tensor) -> Tensor:
        """to_kv(norm_kv(inputs)) (B, M, kv_dim) -> (B, M, Cqk + Cv), with the LayerNorm's affine folded into the
        projection:  (x_hat * g + b) W^T + c  =  x_hat (W diag(g))^T + (W b + c),  x_hat the plain normalised input.

        Same value and the same parameters (checkpoints and HF weights load unchanged), but autograd no longer runs
        a LayerNorm backward over all M inputs: when the inputs need no gradient (pixels + Fourier features) that
        backward disappears, and the weight gradients come from one matmul. The step of the quickstart model
        (784 inputs of 27 channels) is ~12% faster on CPU; folding costs O(kv_dim x (Cqk + Cv)), independent of M.
        """
        x_hat = F.layer_norm(inputs, self.norm_kv.normalized_shape, None, None, self.norm_kv.eps)  # (B, M, kv_dim)
        return F.linear(x_hat, *self._folded_kv_weights())

    def flops(self, num_queries: int, num_inputs: int, project_kv: bool = True, expanded_queries: bool = False) -> int:
        """Forward FLOPs per sample of the path that runs (`absorbs`); project_kv=False: the inputs' k, v come
        from a cache (a shared cross-attend after its first use); expanded_queries: the queries are one array
        expanded over the batch (the latents), which the absorbed path projects once per batch: that work is
        left out of the per-sample count."""
        n, m, q_dim = num_queries, num_inputs, self.to_q.in_features
        absorbed = self.absorbs(n, m)
        macs = n * q_dim * self.qk_channels * (not (absorbed and expanded_queries))  # q
        macs += n * self.v_channels * q_dim  # output projection
        macs += n * 2 * q_dim * self.mlp[0].out_features  # MLP
        if absorbed:  # q W_k (once per batch for expanded queries), Q'X^T, PX, W_v
            macs += self._absorbed_macs(n, m) - n * self.qk_channels * self.to_kv.in_features * expanded_queries
        else:  # k, v (unless cached), QK^T, AV
            macs += self._projected_macs(n, m, project_kv)
        return 2 * macs


@contextlib.contextmanager
def projected_cross_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Every CrossAttentionLayer of `model` on its projected path inside the block (k, v from every input), then
    back as it was: the textbook layer, whose FLOPs the papers count (`flops_per_sample()` inside the block)."""
    layers = [m for m in model.modules() if isinstance(m, CrossAttentionLayer)]
    saved = [layer.absorb for layer in layers]
    try:
        for layer in layers:
            layer.absorb = False
        yield model
    finally:
        for layer, absorb in zip(layers, saved):
            layer.absorb = absorb


# The settings both layers take alike default as CrossAttentionLayer's, declared there once (num_heads differs).
_CROSS = declared_defaults(CrossAttentionLayer)


class SelfAttentionLayer(_Layer):
    """Latent self-attention: x (B, N, dim) -> (B, N, dim), fused qkv projection.

    Args:
        dim: channels of the latents.
        qk_channels: q/k width; None: dim.
        widening_factor: the MLP's hidden width / dim.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qk_channels: int | None = _CROSS["qk_channels"],
        v_channels: int | None = _CROSS["v_channels"],
        widening_factor: int = _CROSS["widening_factor"],
        dropout: float = _CROSS["dropout"],
        checkpoint: bool = _CROSS["checkpoint"],
    ):
        super().__init__()
        self._init_heads(dim, num_heads, qk_channels, v_channels, widening_factor, dim=dim)
        self.dropout, self.checkpoint = dropout, checkpoint
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 2 * self.qk_channels + self.v_channels)  # fused [q; k; v]
        self._init_output(dim, widening_factor, dropout)

    def _forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.to_qkv(self.norm(x)).split([self.qk_channels, self.qk_channels, self.v_channels], dim=-1)
        a = attention(q, k, v, self.num_heads, pad_mask, self.dropout if self.training else 0.0)  # (B, N, Cv)
        x = x + self.proj_drop(self.proj(a))
        return self._mlp_residual(x)

    def flops(self, num_latents: int) -> int:
        dim = self.norm.normalized_shape[0]
        macs = num_latents * dim * (2 * self.qk_channels + self.v_channels)
        macs += num_latents * num_latents * (self.qk_channels + self.v_channels)
        macs += num_latents * self.v_channels * dim
        macs += num_latents * 2 * dim * self.mlp[0].out_features
        return 2 * macs


class SelfAttentionBlock(nn.ModuleList):
    """A latent Transformer: num_layers SelfAttentionLayers applied in order.

    Args:
        num_layers: how many SelfAttentionLayers.
        dim: channels of the latents.
        **layer_kwargs: the layers' other arguments (num_heads, widening_factor, ...; see SelfAttentionLayer).
    """

    def __init__(self, num_layers: int, dim: int, **layer_kwargs):
        check_sizes("SelfAttentionBlock", num_layers=num_layers)
        super().__init__([SelfAttentionLayer(dim, **layer_kwargs) for _ in range(num_layers)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self:
            x = layer(x)
        return x

    def flops(self, num_latents: int) -> int:
        return sum(layer.flops(num_latents) for layer in self)
