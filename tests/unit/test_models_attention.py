"""Attention blocks: SDPA equals a plain softmax reference (with and without a key padding mask); shapes;
activation checkpointing changes nothing but memory."""

import math

import pytest
import torch
import torch.nn.functional as F

from perceiver_lit.models.attention import CrossAttentionLayer, SelfAttentionBlock, SelfAttentionLayer
from perceiver_lit.models.sdpa import attention


def reference_attention(q, k, v, heads, pad_mask=None):
    B, N, _ = q.shape
    q, k, v = (t.reshape(B, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, h, N, M)
    if pad_mask is not None:
        scores = scores.masked_fill(pad_mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, -1)


@pytest.mark.parametrize("heads", [1, 4])
def test_sdpa_matches_softmax_reference(heads):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 16), torch.randn(2, 9, 16), torch.randn(2, 9, 8)
    torch.testing.assert_close(attention(q, k, v, heads), reference_attention(q, k, v, heads), atol=1e-5, rtol=1e-5)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[1, 6:] = True
    out = attention(q, k, v, heads, mask)
    torch.testing.assert_close(out, reference_attention(q, k, v, heads, mask), atol=1e-5, rtol=1e-5)
    # the masked keys really are ignored: dropping them gives the same result for sample 1
    torch.testing.assert_close(out[1:], attention(q[1:], k[1:, :6], v[1:, :6], heads), atol=1e-5, rtol=1e-5)


def test_head_dim_padding_changes_nothing():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 261), torch.randn(2, 9, 261), torch.randn(2, 9, 261)  # HF ImageNet width
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 7:] = True
    padded = attention(q, k, v, 1, mask, pad_head_dims=True)
    assert padded.shape == (2, 5, 261)
    torch.testing.assert_close(padded, reference_attention(q, k, v, 1, mask), atol=1e-5, rtol=1e-5)


def test_cross_attention_layer_matches_unfused_reference():
    torch.manual_seed(0)
    layer = CrossAttentionLayer(q_dim=12, kv_dim=10, num_heads=2, widening_factor=2)
    x, inp = torch.randn(3, 4, 12), torch.randn(3, 7, 10)
    k_w, v_w = layer.to_kv.weight.split([10, 10])
    k_b, v_b = layer.to_kv.bias.split([10, 10])
    xn, inn = layer.norm_q(x), layer.norm_kv(inp)
    a = reference_attention(layer.to_q(xn), F.linear(inn, k_w, k_b), F.linear(inn, v_w, v_b), 2)
    h = x + layer.proj(a)
    ref = h + layer.mlp[2](F.gelu(layer.mlp[0](layer.norm_mlp(h))))
    torch.testing.assert_close(layer(x, inp), ref, atol=1e-5, rtol=1e-5)
    assert layer.qk_channels == 10 and layer.mlp[0].out_features == 24  # "kv" shape, widening 2


def test_self_attention_block_shapes_and_no_query_residual():
    block = SelfAttentionBlock(3, dim=16, num_heads=4)
    assert block(torch.randn(2, 5, 16)).shape == (2, 5, 16) and len(block) == 3
    dec = CrossAttentionLayer(q_dim=6, kv_dim=16, use_query_residual=False)
    assert dec(torch.randn(2, 3, 6), torch.randn(2, 5, 16)).shape == (2, 3, 6)
    with pytest.raises(ValueError, match="divisible"):
        SelfAttentionLayer(10, num_heads=3)


def test_activation_checkpointing_same_values_and_grads():
    torch.manual_seed(0)
    layer = SelfAttentionLayer(16, num_heads=4)
    x = torch.randn(2, 5, 16)
    layer(x).sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer.checkpoint = True
    layer(x).sum().backward()
    for g, p in zip(grads, layer.parameters()):
        torch.testing.assert_close(p.grad, g)


def test_flops_count_by_hand():
    layer = SelfAttentionLayer(8, num_heads=2)
    n = 4
    macs = n * 8 * 24 + 2 * n * n * 8 + n * 8 * 8 + 2 * n * 8 * 8
    assert layer.flops(n) == 2 * macs


def test_folded_kv_projection_matches_layernorm_then_linear_in_value_and_gradients():
    """project_kv folds norm_kv's affine into to_kv: same k/v and the same gradients for all four parameters."""
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 12, num_heads=2, qk_channels=8, v_channels=6)
    with torch.no_grad():  # non-trivial LayerNorm affine, so that the fold has something to fold
        layer.norm_kv.weight.uniform_(0.5, 1.5)
        layer.norm_kv.bias.normal_()
    inputs = torch.randn(3, 50, 12, dtype=torch.float64, requires_grad=True)
    layer.double()
    params = [layer.norm_kv.weight, layer.norm_kv.bias, layer.to_kv.weight, layer.to_kv.bias]
    g = torch.randn(3, 50, 14, dtype=torch.float64)
    ref = layer.to_kv(layer.norm_kv(inputs))
    ref_grads = torch.autograd.grad((ref * g).sum(), [inputs, *params])
    out = layer.project_kv(inputs)
    grads = torch.autograd.grad((out * g).sum(), [inputs, *params])
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b)


def _absorbed_and_projected(layer, x, inputs, mask=None):
    """Outputs and gradients (of x, inputs where it needs one, and every parameter) of both paths."""
    results = []
    for absorb in (True, False):
        layer.absorb = absorb
        layer.zero_grad()
        wanted = [t for t in (x, inputs) if t.requires_grad] + list(layer.parameters())
        out = layer(x, inputs, mask)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        results.append((out, torch.autograd.grad((out * g).sum(), wanted, allow_unused=True)))
    layer.absorb = None
    return results


@pytest.mark.parametrize(
    "heads,qk,v,inputs_grad", [(1, None, None, False), (2, 8, 6, False), (1, 6, 10, True), (3, 9, 12, True)]
)
def test_absorbed_cross_attention_equals_projected_in_value_and_gradients(heads, qk, v, inputs_grad):
    """Moving k and v's projections onto the query side (absorbs) is the same function with the same parameter
    gradients: the k bias only shifts each query's scores (softmax ignores it: zero gradient both ways), the
    probabilities' rows sum to 1 (the v bias passes through). Also with a key padding mask, with inputs that
    need a gradient (learned positions: SDPA path) and without (pixels: the written-out CPU path)."""
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 12, num_heads=heads, qk_channels=qk, v_channels=v).double()
    with torch.no_grad():  # a non-trivial kv LayerNorm affine and k bias
        layer.norm_kv.weight.uniform_(0.5, 1.5)
        layer.norm_kv.bias.normal_()
        layer.to_kv.bias.normal_()
    x = torch.randn(3, 4, 16, dtype=torch.float64, requires_grad=True)
    inputs = torch.randn(3, 40, 12, dtype=torch.float64, requires_grad=inputs_grad)
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[1, 25:] = True
    (out_a, grads_a), (out_p, grads_p) = _absorbed_and_projected(layer, x, inputs, mask)
    torch.testing.assert_close(out_a, out_p)
    for a, p in zip(grads_a, grads_p):
        torch.testing.assert_close(a, p)
    assert grads_a[0].abs().max() > 0


def test_absorbed_cross_attention_without_grad_and_cached_inputs():
    """Evaluation (no autograd: SDPA) and a shared layer reusing its normalised inputs give the projected values."""
    torch.manual_seed(0)
    layer = CrossAttentionLayer(32, 20).eval()
    x, inputs = torch.randn(2, 3, 32), torch.randn(2, 50, 20)
    with torch.no_grad():
        layer.absorb = False
        ref = layer(layer(x, inputs), inputs)
        layer.absorb = True
        z, cache = layer(x, inputs, return_kv=True)
        assert cache.shape == (2, 50, 20)  # x_hat, not [k; v]
        torch.testing.assert_close(layer(z, None, kv=cache), ref, atol=1e-5, rtol=1e-5)


def test_absorb_is_chosen_by_cost():
    enc = CrossAttentionLayer(256, 69)  # the paper's encoder: 1 head, "kv"
    assert enc.absorbs(64, 1024) and enc.absorbs(512, 50_176)
    dense = CrossAttentionLayer(64, 256, qk_channels=256)  # a decoder: a query per output
    assert not dense.absorbs(4096, 64)
    assert CrossAttentionLayer(256, 256, num_heads=8).absorbs(1, 64)  # one classification query
    dropout = CrossAttentionLayer(256, 69, dropout=0.1)  # dropped probabilities: projected
    assert not dropout.absorbs(64, 1024) and dropout.eval().absorbs(64, 1024)


def test_absorbed_flops_count_by_hand():
    layer = CrossAttentionLayer(8, 6, num_heads=1)  # qk = v = 6, MLP 8 -> 8 -> 8
    n, m = 2, 10
    shared = n * 8 * 6 + n * 6 * 8 + 2 * n * 8 * 8  # q, output projection, MLP
    assert layer.absorbs(n, m)
    assert layer.flops(n, m) == 2 * (shared + n * 6 * 6 + 2 * n * m * 6 + n * 6 * 6)
    layer.absorb = False
    assert layer.flops(n, m) == 2 * (shared + m * 6 * 12 + n * m * 12)
    assert layer.flops(n, m, project_kv=False) == 2 * (shared + n * m * 12)


def test_absorbed_attention_with_zero_padded_inputs_as_on_cuda():
    """On CUDA normalize_inputs pads x_hat to a multiple of 8 channels for SDPA's fused kernels; the absorbed
    attention pads W_k to match and drops the padding after: the same result (checked here on CPU)."""
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 11, num_heads=1)  # 11 channels, like ImageNet's 261
    x, inputs = torch.randn(2, 3, 16), torch.randn(2, 20, 11)
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, 15:] = True
    x_hat = layer.normalize_inputs(inputs)
    padded = F.pad(x_hat, (0, 5))  # 16 channels
    torch.testing.assert_close(layer._absorbed_attention(x, padded, mask), layer._absorbed_attention(x, x_hat, mask))


def test_absorbed_queries_of_expanded_latents_are_projected_once_with_the_same_result():
    """The first cross-attend's queries are the latents expanded over the batch: projected once, same values and
    gradients as projecting every copy."""
    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 12, num_heads=1).double()
    latents = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    inputs = torch.randn(3, 30, 12, dtype=torch.float64)
    assert layer.absorbs(5, 30)
    results = []
    for x in (latents.expand(3, -1, -1), latents.expand(3, -1, -1).contiguous()):
        out = layer(x, inputs)
        results.append(
            (out, torch.autograd.grad(out.square().sum(), [latents, *layer.parameters()], allow_unused=True))
        )
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b)


def test_flops_leave_out_the_once_per_batch_query_projection_of_expanded_latents():
    layer = CrossAttentionLayer(8, 6, num_heads=1)
    n, m = 2, 10
    assert layer.flops(n, m) - layer.flops(n, m, expanded_queries=True) == 2 * (n * 8 * 6 + n * 6 * 6)
    layer.absorb = False  # projected: every copy is projected
    assert layer.flops(n, m) == layer.flops(n, m, expanded_queries=True)


def test_bf16_cpu_training_runs_sdpa_math_in_bf16_and_matches_fp32(monkeypatch):
    """CPU training under bf16 autocast (`precision: bf16-mixed`): attention runs SDPA's math backend reducing in
    bf16 (the flash CPU kernel's bf16 backward was 1.2-4x slower at latent shapes, sdpa.py); the global switch
    is restored afterwards (and a user's own setting left alone); values and gradients equal the fp32 layer's to
    bf16 precision. Inference keeps the fused kernel."""
    cuda = torch.backends.cuda
    if not hasattr(cuda, "fp16_bf16_reduction_math_sdp_allowed"):
        pytest.skip("torch < 2.5: SDPA's math backend has no bf16-reduction switch (it does not upcast either)")
    seen = []
    sdpa = F.scaled_dot_product_attention

    def observe(q, *args, **kwargs):
        seen.append(
            (
                torch.backends.cuda.flash_sdp_enabled(),
                torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed(),
                q.dtype,
            )
        )
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", observe)
    torch.manual_seed(0)
    layer = SelfAttentionLayer(64, num_heads=4)
    x = torch.randn(max(4, torch.get_num_threads()), 16, 64)  # batch x heads >= threads: fp32 keeps the fused kernel
    runs = {}
    for bf16 in (False, True):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = layer(xi)
        out.float().square().mean().backward()
        runs[bf16] = [out.detach().float(), xi.grad] + [p.grad.clone() for p in layer.parameters()]
    assert seen[0] == (True, False, torch.float32)  # fp32: the fused kernel, as before
    assert seen[1] == (False, True, torch.bfloat16)  # bf16 training: math backend, bf16 reductions
    assert not torch.backends.cuda.fp16_bf16_reduction_math_sdp_allowed() and torch.backends.cuda.flash_sdp_enabled()
    for ref, got in zip(runs[False], runs[True]):
        assert (got - ref).norm() <= 0.02 * ref.norm(), (got - ref).norm() / ref.norm()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    assert seen[2][:2] == (True, False)  # inference: the fused kernel
    cuda.allow_fp16_bf16_reduction_math_sdp(True)  # a user's own setting is left as it was
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x.clone().requires_grad_())
        assert seen[3] == (False, True, torch.bfloat16) and cuda.fp16_bf16_reduction_math_sdp_allowed()
    finally:
        cuda.allow_fp16_bf16_reduction_math_sdp(False)
