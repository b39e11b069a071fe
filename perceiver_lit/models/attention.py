"""Perceiver building blocks: cross-attention and latent self-attention layers (pre-LN, SDPA).

A layer is  x = attn(LN(x), LN(inputs)) [+ x]  then  x = x + MLP(LN(x)),  as in Perceiver / Perceiver IO.
All attention goes through torch.nn.functional.scaled_dot_product_attention. Self-attention fuses q, k, v
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
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from .checks import check_sizes


def _eager_cpu_training(q: Tensor) -> bool:
    """Autograd will differentiate attention on q, on CPU, outside torch.compile (a compiled graph picks its own
    kernels): where SDPA's math backend can beat its fused CPU kernel."""
    return not q.is_cuda and not torch.compiler.is_compiling() and q.requires_grad and torch.is_grad_enabled()


_REDUCED_DTYPES = (torch.bfloat16, torch.float16)

# Largest attention matrix (bytes) for which SDPA's math backend (it keeps the matrix for backward) is chosen
# over the fused kernel for speed alone: in `attention` (CPU training) and `attend_unprojected`.
MATH_ATTENTION_MAX_BYTES = 256 * 2**20


def _reduced_precision(q: Tensor) -> bool:
    """SDPA will run on q in bf16 / fp16: q's own dtype, or CPU autocast's, which casts fp32 q for SDPA. Autocast
    is asked about the CPU only: that is where the answer is used, and it has no meta device (the CLI's shape
    check runs there)."""
    if q.dtype in _REDUCED_DTYPES:
        return True
    return (q.dtype == torch.float32 and q.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") in _REDUCED_DTYPES)


def _math_matrix_fits(q: Tensor, matrix_elements: int) -> bool:
    """The attention matrix (matrix_elements = B x h x N x M) that SDPA's math backend keeps for backward, in the
    dtype SDPA runs in, is at most MATH_ATTENTION_MAX_BYTES."""
    return matrix_elements * (2 if _reduced_precision(q) else q.element_size()) <= MATH_ATTENTION_MAX_BYTES


def _cpu_math_backward(q: Tensor, batch_heads: int, matrix_elements: int) -> bool:
    """On CPU, in training, SDPA's math backend instead of its fused (flash) CPU kernel, in two cases:

    - fewer (batch x heads) than threads: the flash kernel's backward parallelises over batch x heads only, so
      the Perceiver's 1-head cross-attend at batch 1 (ImageNet shape) ran its backward on one core: that layer's
      fwd + bwd took 5-10x the math backend's, the whole ImageNet training step 4.7x (benchmarks/README.md);
    - bf16 / fp16 (autocast, `precision: bf16-mixed`): the flash kernel's reduced-precision backward is slow at
      the latents' shapes. Fwd + bwd, 2 threads, (B, h, N, d) = (16, 8, 64, 32): flash 13.0 ms (fp32: 2.6 ms),
      math 3.1 ms; (1, 8, 512, 128): flash 10.5 ms, math 8.8 ms (one-off timings, not in benchmarks/results).
    The math backend keeps the (N, M) attention matrix (matrix_elements = B x h x N x M) for backward, so either
    case holds up to MATH_ATTENTION_MAX_BYTES of it a call (attention dropout keeps its mask too)."""
    if not _eager_cpu_training(q) or not _math_matrix_fits(q, matrix_elements):
        return False
    return batch_heads < torch.get_num_threads() or _reduced_precision(q)


@contextlib.contextmanager
def _math_sdpa(q: Tensor) -> Iterator[None]:
    """SDPA's math backend. For bf16 / fp16 q it reduces in that dtype, as a plain softmax(QK^T)V under CPU
    autocast does (the fused kernels accumulate in fp32), instead of its default of upcasting q, k, v to fp32
    (torch >= 2.5), which cost 1.3-2.5x in the shapes above. Relative error against fp64 at (16, 8, 64, 32):
    0.0045, against the flash kernel's 0.0021 (one-off), well inside bf16 training's noise.
    torch's switch for it is process-wide: it is turned on only if it was off, and turned back off only by the
    call that turned it on. The math backend is decomposed into ordinary ops in forward, so backward (and
    activation-checkpoint recomputation, which repeats this choice) does not depend on it afterwards."""
    cuda = torch.backends.cuda
    switch = getattr(cuda, "allow_fp16_bf16_reduction_math_sdp", None)  # torch >= 2.5
    turned_on = bool(switch) and _reduced_precision(q) and not cuda.fp16_bf16_reduction_math_sdp_allowed()
    if turned_on:
        switch(True)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        if turned_on:
            switch(False)


def attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int, pad_mask: Tensor | None = None,
              dropout_p: float = 0.0, pad_head_dims: bool | None = None) -> Tensor:
    """Multi-head attention on projected q (B, N, Cqk), k (B, M, Cqk), v (B, M, Cv) -> (B, N, Cv).

    pad_mask: bool (B, M), True at padded keys (they get no attention). Scale 1/sqrt(Cqk / num_heads).
    pad_head_dims: zero-pad head dims to a multiple of 8 (default: on CUDA) so that SDPA can pick a fused
    kernel; the ImageNet cross-attention has 261 channels. Zeros change neither QK^T nor AV.
    """
    B, N, _ = q.shape
    M = k.shape[1]
    q = q.view(B, N, num_heads, -1).transpose(1, 2)  # (B, h, N, dqk)
    k = k.view(B, M, num_heads, -1).transpose(1, 2)  # (B, h, M, dqk)
    v = v.view(B, M, num_heads, -1).transpose(1, 2)  # (B, h, M, dv)
    dqk, dv = q.shape[-1], v.shape[-1]
    scale = None
    if (q.is_cuda if pad_head_dims is None else pad_head_dims) and (dqk % 8 or dv % 8):
        scale = dqk ** -0.5
        q, k = F.pad(q, (0, -dqk % 8)), F.pad(k, (0, -dqk % 8))
        v = F.pad(v, (0, -dv % 8))
    mask = None if pad_mask is None else ~pad_mask[:, None, None, :]  # (B, 1, 1, M), True = attend
    if _cpu_math_backward(q, B * num_heads, B * num_heads * N * M):
        with _math_sdpa(q):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out[..., :dv].transpose(1, 2).reshape(B, N, -1)  # (B, h, N, dv) -> (B, N, Cv)


def attend_unprojected(q: Tensor, x_hat: Tensor, scale: float, pad_mask: Tensor | None = None) -> Tensor:
    """softmax(q x_hat^T * scale) x_hat for q (B, h, N, C) against keys = values = x_hat (B, M, C) -> (B, h, N, C).

    The keys are the normalised inputs themselves, which need no gradient when the inputs need none (pixels and
    Fourier features). SDPA's fused CPU kernel computes the key and value gradients regardless and recomputes the
    scores in backward: five (N x M x C) matmuls. Its math backend is differentiated op by op, so autograd keeps the
    probabilities and does two (dP = dO x_hat^T, dq = dS x_hat): the medium Perceiver's CPU training step is
    1.2x faster (benchmarks/README.md). The cost is the kept (B, h, N, M) matrix, so the math backend runs on CPU
    only, in training, when x_hat needs no gradient and that matrix is at most MATH_ATTENTION_MAX_BYTES. When x_hat
    needs one (a trainable conv stem before it, HF's conv model), the math backend is taken in `_cpu_math_backward`'s
    cases: the fused kernel's backward runs on one thread per (batch x head), and at batch 1 with HF's 1-head encoder
    it took 2-3x the math backend's fwd + bwd and the conv model's fine-tuning step 0.9x HF's (2 threads).
    """
    B, h = q.shape[:2]
    M = x_hat.shape[1]
    kv = x_hat.unsqueeze(1).expand(B, h, M, -1)                                    # (B, h, M, C), no copy
    mask = None if pad_mask is None else ~pad_mask[:, None, None, :]               # (B, 1, 1, M), True = attend
    matrix = B * h * q.shape[2] * M
    no_kv_grad = not x_hat.requires_grad and _eager_cpu_training(q) and _math_matrix_fits(q, matrix)
    if no_kv_grad or _cpu_math_backward(q, B * h, matrix):
        with _math_sdpa(q):
            return F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask, scale=scale)
    if q.is_cuda:  # the fused CUDA kernels get plain strides: q may be one row of queries expanded over the batch
        q = q.contiguous()
    return F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask, scale=scale)


@torch.no_grad()
def trunc_normal_(t: Tensor, std: float) -> Tensor:
    """In place: N(0, std^2) truncated at +-2 std, by inverse-CDF sampling (one pass; torch's rejection loop
    takes seconds on large CPU tensors)."""
    bound = math.erf(2 / math.sqrt(2))
    return t.uniform_(-bound, bound).erfinv_().mul_(std * math.sqrt(2)).clamp_(-2 * std, 2 * std)


def init_linear_(module: nn.Module) -> None:
    """DeepMind's Haiku init for every Linear (VarianceScaling(1.0)): truncated normal cut at 2 std with
    variance 1/fan_in (0.8796 corrects the truncation's loss of variance); zero bias. Apply with model.apply."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, module.in_features ** -0.5 / 0.87962566103423978)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MLP(nn.Sequential):
    """Linear(dim -> widening * dim) -> GELU -> Linear(-> dim)."""

    def __init__(self, dim: int, widening_factor: int = 1, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, widening_factor * dim), nn.GELU(), nn.Linear(widening_factor * dim, dim),
                         nn.Dropout(dropout))


class _Layer(nn.Module):
    """Shared tail of both layers: the MLP residual, dropout and the activation-checkpointing switch."""

    checkpoint: bool

    def forward(self, *args, **kwargs) -> Tensor:
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, *args, use_reentrant=False, **kwargs)
        return self._forward(*args, **kwargs)

    def _mlp_residual(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm_mlp(x))


class CrossAttentionLayer(_Layer):
    """Queries x (B, N, q_dim) attend to inputs (B, M, kv_dim); output (B, N, q_dim).

    qk_channels defaults to kv_dim (DeepMind's "kv" shape for attention), v_channels to qk_channels.
    use_query_residual=False drops the attention residual (decoders whose queries are positions, not outputs).
    """

    def __init__(self, q_dim: int, kv_dim: int, num_heads: int = 1, qk_channels: int | None = None,
                 v_channels: int | None = None, widening_factor: int = 1, dropout: float = 0.0,
                 use_query_residual: bool = True, checkpoint: bool = False):
        super().__init__()
        check_sizes("CrossAttentionLayer", q_dim=q_dim, kv_dim=kv_dim, num_heads=num_heads, qk_channels=qk_channels,
                    v_channels=v_channels, widening_factor=widening_factor)
        qk_channels = qk_channels or kv_dim
        v_channels = v_channels or qk_channels
        if qk_channels % num_heads or v_channels % num_heads:
            raise ValueError(f"CrossAttentionLayer: qk_channels {qk_channels} / v_channels {v_channels} "
                             f"not divisible by num_heads {num_heads}")
        self.num_heads, self.qk_channels, self.v_channels = num_heads, qk_channels, v_channels
        self.use_query_residual, self.dropout, self.checkpoint = use_query_residual, dropout, checkpoint
        self.absorb: bool | None = None  # see absorbs(); None: by cost
        self.norm_q = nn.LayerNorm(q_dim)
        self.norm_kv = nn.LayerNorm(kv_dim)
        self.to_q = nn.Linear(q_dim, qk_channels)
        self.to_kv = nn.Linear(kv_dim, qk_channels + v_channels)  # fused [k; v]
        self.proj = nn.Linear(v_channels, q_dim)
        self.proj_drop = nn.Dropout(dropout)
        self.norm_mlp = nn.LayerNorm(q_dim)
        self.mlp = MLP(q_dim, widening_factor, dropout)

    def _forward(self, x: Tensor, inputs: Tensor | None, pad_mask: Tensor | None = None, kv: Tensor | None = None,
                 return_kv: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, N, q_dim), inputs (B, M, kv_dim) -> (B, N, q_dim).

        kv / return_kv: a layer applied again to the same inputs (the Perceiver's shared cross-attends) can
        reuse what it computed from the inputs alone, instead of recomputing it over all M inputs: the projected
        [k; v] (B, M, Cqk + Cv), or, when the layer absorbs the projections, the normalised inputs (B, M, kv_dim).
        """
        num_inputs = (inputs if kv is None else kv).shape[1]
        if self.absorbs(x.shape[1], num_inputs):
            if kv is None:
                kv = self.normalize_inputs(inputs)                                  # (B, M, kv_dim)
            a = self._absorbed_attention(x, kv, pad_mask)                           # (B, N, Cv)
        else:
            if kv is None:
                kv = self.project_kv(inputs)                                        # (B, M, Cqk + Cv)
            k, v = kv.split([self.qk_channels, self.v_channels], dim=-1)
            q = self.to_q(self.norm_q(x))                                            # (B, N, Cqk)
            a = attention(q, k, v, self.num_heads, pad_mask, self.dropout if self.training else 0.0)  # (B, N, Cv)
        a = self.proj_drop(self.proj(a))                                            # (B, N, q_dim)
        x = x + a if self.use_query_residual else a
        x = self._mlp_residual(x)
        return (x, kv) if return_kv else x

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
        weight = lin.weight if ln.weight is None else lin.weight * ln.weight      # (Cqk + Cv, kv_dim)
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
        w_k, w_v = weight.split([self.qk_channels, self.v_channels])               # (Cqk, C), (Cv, C)
        w_k = F.pad(w_k.view(h, dqk, C), (0, x_hat.shape[-1] - C))                 # (h, dqk, C [+ CUDA padding])
        # The latents expanded over the batch (the first cross-attend) are the same queries for every sample:
        # project them once. einsum, not a broadcast matmul: the weights' gradients then come from one matmul per
        # head, not from a (B x ...) batch of outer products summed afterwards.
        rows = x[:1] if B > 1 and x.stride(0) == 0 else x                           # (1 or B, N, q_dim)
        q = self.to_q(self.norm_q(rows)).view(rows.shape[0], N, h, dqk)             # (1 or B, N, h, dqk)
        q = torch.einsum("bnhd,hdc->bhnc", q, w_k).expand(B, -1, -1, -1)            # (B, h, N, C)
        o = attend_unprojected(q, x_hat, dqk ** -0.5, pad_mask)[..., :C]            # (B, h, N, C)
        b_v = None if bias is None else bias[self.qk_channels:]                     # b_k drops out (softmax)
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

    def flops(self, num_queries: int, num_inputs: int, project_kv: bool = True, expanded_queries: bool = False
              ) -> int:
        """Forward FLOPs per sample of the path that runs (`absorbs`); project_kv=False: the inputs' k, v come
        from a cache (a shared cross-attend after its first use); expanded_queries: the queries are one array
        expanded over the batch (the latents), which the absorbed path projects once per batch: that work is
        left out of the per-sample count."""
        n, m, q_dim = num_queries, num_inputs, self.to_q.in_features
        absorbed = self.absorbs(n, m)
        macs = n * q_dim * self.qk_channels * (not (absorbed and expanded_queries))  # q
        macs += n * self.v_channels * q_dim                                    # output projection
        macs += n * 2 * q_dim * self.mlp[0].out_features                       # MLP
        if absorbed:            # q W_k (once per batch for expanded queries), Q'X^T, PX, W_v
            macs += self._absorbed_macs(n, m) - n * self.qk_channels * self.to_kv.in_features * expanded_queries
        else:                   # k, v (unless cached), QK^T, AV
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


class SelfAttentionLayer(_Layer):
    """Latent self-attention: x (B, N, dim) -> (B, N, dim), fused qkv projection."""

    def __init__(self, dim: int, num_heads: int = 8, qk_channels: int | None = None, v_channels: int | None = None,
                 widening_factor: int = 1, dropout: float = 0.0, checkpoint: bool = False):
        super().__init__()
        check_sizes("SelfAttentionLayer", dim=dim, num_heads=num_heads, qk_channels=qk_channels,
                    v_channels=v_channels, widening_factor=widening_factor)
        qk_channels = qk_channels or dim
        v_channels = v_channels or qk_channels
        if qk_channels % num_heads or v_channels % num_heads:
            raise ValueError(f"SelfAttentionLayer: qk_channels {qk_channels} / v_channels {v_channels} "
                             f"not divisible by num_heads {num_heads}")
        self.num_heads, self.qk_channels, self.v_channels = num_heads, qk_channels, v_channels
        self.dropout, self.checkpoint = dropout, checkpoint
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 2 * qk_channels + v_channels)  # fused [q; k; v]
        self.proj = nn.Linear(v_channels, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, widening_factor, dropout)

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
    """A latent Transformer: num_layers SelfAttentionLayers applied in order."""

    def __init__(self, num_layers: int, dim: int, **layer_kwargs):
        check_sizes("SelfAttentionBlock", num_layers=num_layers)
        super().__init__([SelfAttentionLayer(dim, **layer_kwargs) for _ in range(num_layers)])

    def forward(self, x: Tensor) -> Tensor:
        for layer in self:
            x = layer(x)
        return x

    def flops(self, num_latents: int) -> int:
        return sum(layer.flops(num_latents) for layer in self)
