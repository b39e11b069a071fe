"""Attention blocks: SDPA equals a plain softmax reference (with and without a key padding mask); shapes;
activation checkpointing changes nothing but memory."""

import math

import pytest
import torch
import torch.nn.functional as F

from perceiver_lit.models.attention import CrossAttentionLayer, SelfAttentionBlock, SelfAttentionLayer, attention


def reference_attention(q, k, v, heads, pad_mask=None):
    B, N, _ = q.shape
    M = k.shape[1]
    q, k, v = (t.reshape(B, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])               # (B, h, N, M)
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
    q, k, v = torch.randn(2, 5, 261), torch.randn(2, 9, 261), torch.randn(2, 9, 261)   # HF ImageNet width
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
    assert layer.qk_channels == 10 and layer.mlp[0].out_features == 24       # "kv" shape, widening 2


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
