"""Dense Perceiver IO decoding: one query per output element (a pixel's flow, a video patch, an audio patch).

`DenseDecoder` cross-attends a batch of queries to the latents and projects each to its output channels. Each
query is decoded independently of the others (LayerNorm, attention over the latents, MLP: all per query), so

- a subset of queries (`query_indices`) decodes to exactly the rows of the full decode at those indices: the
  paper trains its autoencoder on a random subset of output points;
- queries can be decoded in chunks: in eval every query is decoded, `chunk_size` at a time, so the attention
  matrix (B, h, chunk, N latents) and the chunk's activations bound the memory at any output size.

The queries come from a callable `make_queries(indices) -> (B, Q_chunk, C)`, so that a chunk's queries are built
only when that chunk is decoded (the full query array of a 16 x 224 x 224 video would be 600 MiB).

Narrow queries (the flow decoder: 322-channel queries, 512-channel attention) decode "latent-side absorbed"
(`LatentSideWeights`): the query and output projections are folded into the latents' keys and values once per
forward, so each query's attention runs at its own width and its q / output projections disappear. Exact, the same
parameters; at the official flow shape 42% fewer decoder FLOPs.

Outside training, a decoder without query residual whose outputs go through linear heads (the autoencoder's
modalities: 1026 channels -> head 512 -> 3 per pixel) decodes with its output side folded (`FoldedOutput`): the
output projection, the MLP's LayerNorm and both MLP layers, the head and the modality's postprocessor become two
matrices applied to the attention output. Exact up to float rounding; at the official autoencoder's video
decoder 2.1x fewer multiply-adds per query.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .attention import CrossAttentionLayer

QueryFn = Callable[[Tensor], Tensor]

# A multiply-add inside SDPA's fused CPU kernel costs about 1.5 of a plain matmul's (2 threads: ~100 against ~165
# GFLOP/s): at the autoencoder's decoder (1026-channel queries, 512-channel attention, 784 latents) the latent-side
# path has 13% fewer multiply-adds but ran 1.0 s a 8192-query chunk against the plain layer's 0.97 s, so it is
# weighed with this factor (flow decoder: 0.42 s against 0.53 s).
ATTENTION_MAC_COST = 1.5


def take_rows(x: Tensor, indices: Tensor) -> Tensor:
    """Rows of x (B, M, C) at indices (Q,) (the same for every sample) or (B, Q) (per sample) -> (B, Q, C)."""
    if indices.ndim == 1:
        return x.index_select(1, indices.to(x.device))
    return x.gather(1, indices.to(x.device)[..., None].expand(-1, -1, x.shape[-1]))


def random_query_indices(
    num_queries: int, num_samples: int, batch_size: int, device=None, generator: torch.Generator | None = None
) -> Tensor:
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
    return scores.topk(num_samples, dim=1, sorted=False).indices.sort(dim=1).values  # (B, Q)


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

    latent_side_absorb: bool | None = None  # see absorbs_latent_side(); None: by cost
    fold_output: bool | None = None  # see folds_output(); None: by cost

    def __init__(
        self,
        query_channels: int,
        latent_dim: int,
        output_channels: int | None,
        num_heads: int = 1,
        qk_channels: int | None = None,
        v_channels: int | None = None,
        widening_factor: int = 1,
        use_query_residual: bool = False,
        chunk_size: int | None = 8192,
        dropout: float = 0.0,
        checkpoint: bool = False,
    ):
        super().__init__()
        self.cross = CrossAttentionLayer(
            query_channels,
            latent_dim,
            num_heads,
            qk_channels,
            v_channels,
            widening_factor,
            dropout,
            use_query_residual=use_query_residual,
            checkpoint=checkpoint,
        )
        # Many queries against few latents: project the latents' k, v once, reused by every chunk.
        self.cross.absorb = False
        self.head = nn.Linear(query_channels, output_channels) if output_channels else nn.Identity()
        self.chunk_size = chunk_size

    def forward(
        self,
        z: Tensor,
        make_queries: QueryFn,
        num_queries: int,
        query_indices: Tensor | None = None,
        postprocess: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """z (B, N, latent_dim) -> (B, Q, output_channels).

        Args:
            z: the latents after the processor.
            make_queries: indices (Q,) or (B, Q) int64 -> queries (B, Q, query_channels) at those output indices.
            num_queries: the number of output elements (the full decode's Q).
            query_indices: decode only these outputs ((Q,) or (B, Q) flat indices); None: all of them, in order.
            postprocess: applied to each chunk's output (a modality's head): only its (narrower) result is kept
                for all queries, not the decoder's width (the autoencoder's 512 channels x 802,816 pixels: 1.5 GiB).
        """
        idx = query_indices if query_indices is not None else torch.arange(num_queries, device=z.device)
        kv = self.cross.project_kv(z)  # (B, N, Cqk + Cv), once
        n = idx.shape[-1]
        chunk = self.chunk_size if (self.chunk_size and (not self.training or not torch.is_grad_enabled())) else n
        path = self.decode_path(n, z.shape[1], postprocess)
        latent_side = LatentSideWeights(self.cross, kv) if path == "latent_side" else None
        folded = FoldedOutput(self.cross, self.head, postprocess) if path == "folded" else None
        outs = []
        for start in range(0, n, chunk):
            # in the latents' dtype: under FSDP2 the unit's inputs come cast to bf16, queries built here do not
            q = make_queries(idx[..., start : start + chunk]).to(z.dtype)  # (B, q, query_channels)
            if folded is not None:
                outs.append(folded(self.cross.attend(q, kv)))  # (B, q, postprocess's channels)
                continue
            x = self.cross(q, None, kv=kv) if latent_side is None else latent_side(q)
            x = self.head(x)  # (B, q, output_channels)
            outs.append(x if postprocess is None else postprocess(x))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)  # (B, Q, output_channels)

    def decode_path(self, num_queries: int, num_latents: int, postprocess: nn.Module | None = None) -> str:
        """Which path decodes `num_queries` against `num_latents` (forward and `flops` both ask here):
        "latent_side" (`absorbs_latent_side`), else "folded" (`folds_output`), else "plain"."""
        if self.absorbs_latent_side(num_queries, num_latents):
            return "latent_side"
        return "folded" if self.folds_output(num_queries, postprocess) else "plain"

    def folds_output(self, num_queries: int, postprocess: Callable[[Tensor], Tensor] | None) -> bool:
        """Whether `FoldedOutput` decodes: outside training (its folds are made per forward, and training keeps
        the layer's own graph), without query residual, with linear (or no) head and postprocessor, and when the
        multiply-adds it saves over `num_queries` outweigh making the folds (`fold_output` True / False forces it
        where it applies)."""
        if (self.training and torch.is_grad_enabled()) or self.cross.use_query_residual:
            return False
        if not isinstance(self.head, (nn.Linear, nn.Identity)) or not isinstance(postprocess, (nn.Linear, type(None))):
            return False
        if not isinstance(self.cross.mlp[1], nn.GELU):
            return False
        if self.fold_output is not None:
            return self.fold_output
        plain, folded, cost = FoldedOutput.macs(self.cross, self.head, postprocess)
        return num_queries * (plain - folded) > cost

    def absorbs_latent_side(self, num_queries: int, num_latents: int) -> bool:
        """Whether `LatentSideWeights` decodes: when its multiply-adds (latent-side folding, then attention at the
        query width) are fewer than the plain layer's (q and output projections, attention at Cqk / Cv), outside
        training. In training the plain layer keeps `attention`'s CPU backend choice (SDPA's math backend where
        the fused kernel's backward would run on one core: benchmarks/README.md); the latent-side path's training
        speed is unmeasured. `latent_side_absorb` (None: by the count; True / False) forces it."""
        if self.latent_side_absorb is not None:
            return self.latent_side_absorb
        if self.training and torch.is_grad_enabled():
            return False
        cross, q, n, w = self.cross, num_queries, num_latents, ATTENTION_MAC_COST
        c, h = cross.to_q.in_features, cross.num_heads
        plain = q * (c * cross.qk_channels + w * n * (cross.qk_channels + cross.v_channels) + cross.v_channels * c)
        absorbed = n * c * (cross.qk_channels + cross.v_channels) + q * h * (w * 2 * n * c + c)
        return absorbed < plain

    def flops(self, num_queries: int, num_latents: int, postprocess: nn.Module | None = None) -> int:
        """Forward FLOPs per sample (at batch 1: the folds counted once) of what runs: the cross-attend (k, v of the
        latents projected once; latent-side absorbed when `absorbs_latent_side`; output side folded when
        `folds_output`), the head and `postprocess` (a Linear)."""
        post = 0
        if isinstance(postprocess, nn.Linear):
            post = 2 * num_queries * postprocess.in_features * postprocess.out_features
        cross, q, n = self.cross, num_queries, num_latents
        path = self.decode_path(q, n, postprocess)
        if path == "folded":
            _, folded, folds = FoldedOutput.macs(cross, self.head, postprocess)
            attend = q * cross.to_q.in_features * cross.qk_channels + cross._projected_macs(q, n)
            return 2 * (attend + q * folded + folds)
        head = 0
        if isinstance(self.head, nn.Linear):
            head = 2 * num_queries * self.head.in_features * self.head.out_features
        if path == "plain":
            return self.cross.flops(num_queries, num_latents) + head + post
        c = cross.to_q.in_features
        kv = n * cross.to_kv.in_features * (cross.qk_channels + cross.v_channels)  # k, v of the latents
        fold = n * c * (cross.qk_channels + cross.v_channels) + n * cross.qk_channels  # K, V, c
        attend = q * cross.num_heads * 2 * n * c  # x_hat K^T, P V
        mlp = q * 2 * c * cross.mlp[0].out_features
        return 2 * (kv + fold + attend + mlp) + head + post


def _weight_bias(lin: nn.Linear) -> tuple[Tensor, Tensor]:
    """A Linear's weight and bias (zeros when it has none), in float32."""
    w = lin.weight.float()
    return w, (lin.bias.float() if lin.bias is not None else w.new_zeros(w.shape[0]))


class FoldedOutput:
    """A decoder cross-attend's output side, from the attention output on, folded into two matrices for inference:
    the output projection, the MLP residual with its LayerNorm, the decoder's head and a linear postprocessor.

    With a the attention output (Cv), x = W_o a + b_o (D), LN(x) = g * (x - mu) / s + beta, the MLP
    y = x + W_2 gelu(W_1 LN(x) + b_1) + b_2 and the heads out = L y + c (L = P H, c = P b_h + b_p):

        mu        = u . a + mean(b_o)                             u = W_o^T 1 / D
        s^2       = (a^T G a + 2 r . a + |b'|^2) / D + eps         W_c = W_o centred per column, b' = b_o - mean(b_o),
                                                                   G = W_c^T W_c, r = W_c^T b'
        W_1 LN(x) = (A a + W_1 (g * b_o) - mu W_1 g) / s + W_1 beta      A = W_1 diag(g) W_o
        out       = (L W_o) a + (L W_2) gelu(W_1 LN(x) + b_1) + L (b_o + b_2) + c

    The variance is taken about the mean (W_c, b'), so no large mean cancels. Per query this costs
    Cv (D_h + Cv + K + 2) + D_h K multiply-adds instead of Cv D + 2 D D_h + D H + H K (`macs`); the folds cost
    O(D_h D Cv + D Cv^2) once per forward. Exact up to float rounding (tested against the layer).

    Args:
        cross: the decoder's CrossAttentionLayer (no query residual; its MLP Linear -> GELU -> Linear).
        head: the decoder's head (nn.Linear or nn.Identity).
        postprocess: a modality's nn.Linear after the head, or None.
    """

    def __init__(self, cross: CrossAttentionLayer, head: nn.Module, postprocess: nn.Linear | None):
        w_o, b_o = _weight_bias(cross.proj)  # (D, Cv), (D,)
        D = w_o.shape[0]
        ln = cross.norm_mlp
        gamma = ln.weight.float() if ln.weight is not None else w_o.new_ones(D)
        beta = ln.bias.float() if ln.bias is not None else w_o.new_zeros(D)
        w_1, b_1 = _weight_bias(cross.mlp[0])  # (Dh, D)
        w_2, b_2 = _weight_bias(cross.mlp[2])  # (D, Dh)
        L, c = None, None  # the heads as one affine map y -> L y + c
        for lin in (head, postprocess):
            if isinstance(lin, nn.Linear):
                w, b = _weight_bias(lin)
                L, c = (w, b) if L is None else (w @ L, w @ c + b)
        if L is None:
            L, c = torch.eye(D, device=w_o.device), w_o.new_zeros(D)
        u = w_o.mean(0)  # (Cv,)
        w_c, b_c = w_o - u, b_o - b_o.mean()
        A = (w_1 * gamma) @ w_o  # (Dh, Cv)
        # one matmul per query: [A; G; u; r; L W_o] a
        self.weight = torch.cat([A, w_c.T @ w_c, u[None], (w_c.T @ b_c)[None], L @ w_o])  # (Dh + Cv + 2 + K, Cv)
        self.sizes = [A.shape[0], w_o.shape[1], 1, 1, L.shape[0]]
        self.mu_b, self.bb, self.D, self.eps = b_o.mean(), b_c @ b_c, D, ln.eps
        self.a0, self.w1g, self.w1b = w_1 @ (gamma * b_o), w_1 @ gamma, w_1 @ beta + b_1  # (Dh,)
        self.w_out, self.c_out = L @ w_2, L @ (b_o + b_2) + c  # (K, Dh), (K,)
        self.approximate = cross.mlp[1].approximate

    @staticmethod
    def macs(cross: CrossAttentionLayer, head: nn.Module, postprocess: nn.Linear | None) -> tuple[int, int, int]:
        """Multiply-adds (plain per query from the attention output on, folded per query, making the folds). The
        folds' matrix-vector products (O(D D_h)) are left out, as torch's FLOP counter leaves them out."""
        cv, D = cross.proj.in_features, cross.proj.out_features
        dh = cross.mlp[0].out_features
        linears = [lin for lin in (head, postprocess) if isinstance(lin, nn.Linear)]
        plain = cv * D + 2 * D * dh + sum(lin.in_features * lin.out_features for lin in linears)
        width = linears[-1].out_features if linears else D  # K
        folded = cv * (dh + cv + width + 2) + dh * width
        chain = D * linears[0].out_features * width if len(linears) == 2 else 0  # P H
        return plain, folded, dh * D * cv + D * cv * cv + width * D * (cv + dh) + chain

    def __call__(self, a: Tensor) -> Tensor:
        """The attention output a (B, Q, Cv) -> the postprocessed output (B, Q, K), in a's dtype."""
        dtype = a.dtype
        y = a @ self.weight.to(dtype).T  # (B, Q, Dh + Cv + 2 + K)
        pre, ga, mu, ra, lin = y.float().split(self.sizes, dim=-1)
        quad = (ga * a.float()).sum(-1, keepdim=True)  # a^T G a
        inv = torch.rsqrt(((quad + 2 * ra + self.bb) / self.D).clamp_min(0) + self.eps)  # 1 / s
        mu = mu + self.mu_b
        pre = (pre + self.a0 - mu * self.w1g) * inv + self.w1b  # (B, Q, Dh)
        g = F.gelu(pre, approximate=self.approximate)
        return (lin + g @ self.w_out.T + self.c_out).to(dtype)  # (B, Q, K)


class LatentSideWeights:
    """A decoder cross-attend with its query and output projections folded into the latents' keys and values, for
    queries narrower than the attention (the flow decoder: 322-channel queries, Cqk = Cv = 512; 1 head).

    Per head h, with the query LayerNorm's affine folded into the query projection (W_q' = W_q diag(g),
    b_q' = W_q b + b_q) and x_hat the plain normalised queries:

        scores_h = (x_hat W_q,h'^T + b_q,h') k_h^T  =  x_hat K_h^T + c_h,   K_h = k_h W_q,h'  (N, C),  c_h = k_h b_q,h'
        out      = sum_h P_h v_h W_o,h^T + b_o       =  sum_h P_h V_h + b_o,  V_h = v_h W_o,h^T  (N, C)

    c_h is one bias per key (not per query, so softmax does not drop it): SDPA's additive float mask (scaled), which
    its fused CPU kernel takes (B, h, 1, N). K, V and c are made once per forward from the latents (O(N C (Cqk + Cv)));
    each query then costs 2 N C per head instead of C Cqk + N (Cqk + Cv) + Cv C. Exact in value and gradient (up to
    float rounding), with the layer's own parameters; the rest of the layer (query residual, output dropout, MLP)
    is the layer's.

    Args:
        cross: the decoder's CrossAttentionLayer.
        kv: its projected latents, cross.project_kv(z) (B, N, Cqk + Cv).
    """

    def __init__(self, cross: CrossAttentionLayer, kv: Tensor):
        B, N, _ = kv.shape
        h = cross.num_heads
        C = cross.to_q.in_features
        dqk, dv = cross.qk_channels // h, cross.v_channels // h
        self.cross, self.scale = cross, dqk**-0.5
        k, v = kv.split([cross.qk_channels, cross.v_channels], dim=-1)
        k, v = k.view(B, N, h, dqk), v.view(B, N, h, dv)
        ln, lin = cross.norm_q, cross.to_q
        w_q = lin.weight if ln.weight is None else lin.weight * ln.weight  # (Cqk, C)
        b_q = lin.bias
        if ln.bias is not None:
            b_q = lin.weight @ ln.bias if b_q is None else torch.addmv(b_q, lin.weight, ln.bias)
        self.keys = torch.einsum("bnhd,hdc->bhnc", k, w_q.view(h, dqk, C))  # (B, h, N, C)
        # SDPA adds the mask to the scaled scores: the bias is scaled here
        self.bias = None if b_q is None else torch.einsum("bnhd,hd->bhn", k, b_q.view(h, dqk) * self.scale)[:, :, None]
        w_o = cross.proj.weight.view(C, h, dv)  # (C, h, dv)
        self.values = torch.einsum("bnhd,chd->bhnc", v, w_o)  # (B, h, N, C)

    def __call__(self, x: Tensor) -> Tensor:
        """Queries x (B, Q, C) -> the layer's output (B, Q, C)."""
        cross = self.cross
        if cross.checkpoint and cross.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        cross = self.cross
        x_hat = F.layer_norm(x, cross.norm_q.normalized_shape, None, None, cross.norm_q.eps)[:, None]  # (B, 1, Q, C)
        q = x_hat.expand(-1, self.keys.shape[1], -1, -1)  # (B, h, Q, C)
        dropout = cross.dropout if cross.training else 0.0
        a = F.scaled_dot_product_attention(
            q, self.keys, self.values, attn_mask=self.bias, dropout_p=dropout, scale=self.scale
        )  # (B, h, Q, C)
        a = a.sum(1) if a.shape[1] > 1 else a[:, 0]  # (B, Q, C)
        if cross.proj.bias is not None:
            a = a + cross.proj.bias
        a = cross.proj_drop(a)
        x = x + a if cross.use_query_residual else a
        return cross._mlp_residual(x)
