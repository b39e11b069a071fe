"""Which SDPA kernel attention runs on, on CPU and CUDA, and the process-wide switch that choice flips.

`attention` (multi-head attention on projected q, k, v) and `attend_unprojected` (the absorbed cross-attention's
softmax(q x_hat^T) x_hat) both go through torch.nn.functional.scaled_dot_product_attention. On CUDA they leave the
kernel to SDPA (zero-padding head dims to a multiple of 8 so that a fused kernel applies). On CPU, in eager
training, they pick SDPA's math backend over its fused (flash) CPU kernel where that is faster
(`_cpu_math_backward`, `attend_unprojected`), bounded by MATH_ATTENTION_MAX_BYTES of kept attention matrix; for
bf16 / fp16 the math backend reduces in that dtype, which needs torch's process-wide
`allow_fp16_bf16_reduction_math_sdp` switch (`_math_sdpa` turns it on and back off). benchmarks/README.md has the
timings behind each choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel


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
    return (
        q.dtype == torch.float32
        and q.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") in _REDUCED_DTYPES
    )


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


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    num_heads: int,
    pad_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    pad_head_dims: bool | None = None,
) -> Tensor:
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
        scale = dqk**-0.5
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
    kv = x_hat.unsqueeze(1).expand(B, h, M, -1)  # (B, h, M, C), no copy
    mask = None if pad_mask is None else ~pad_mask[:, None, None, :]  # (B, 1, 1, M), True = attend
    matrix = B * h * q.shape[2] * M
    no_kv_grad = not x_hat.requires_grad and _eager_cpu_training(q) and _math_matrix_fits(q, matrix)
    if no_kv_grad or _cpu_math_backward(q, B * h, matrix):
        with _math_sdpa(q):
            return F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask, scale=scale)
    if q.is_cuda:  # the fused CUDA kernels get plain strides: q may be one row of queries expanded over the batch
        q = q.contiguous()
    return F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask, scale=scale)
