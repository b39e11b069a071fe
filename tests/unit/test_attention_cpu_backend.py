"""The absorbed cross-attention (sdpa.attend_unprojected) on CPU in training, with inputs that need a gradient
(a trainable conv stem before it: HF's conv model): SDPA's math backend when batch x heads < threads, whose
backward runs on every thread (the fused kernel's runs on one per batch x head), with the fused kernel's values."""

import contextlib

import pytest
import torch

from perceiver_lit.models import attention as A
from perceiver_lit.models import sdpa as S


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(max(old, 2))  # the case needs batch x heads (1) < threads
    yield
    torch.set_num_threads(old)


def _run(layer, x, inputs):
    layer.zero_grad()
    out = layer(x, inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return out, torch.autograd.grad((out * g).sum(), [inputs, *layer.parameters()], allow_unused=True)


def test_inputs_with_grad_take_math_backend_with_fused_kernel_values(two_threads, monkeypatch):
    torch.manual_seed(0)
    layer = A.CrossAttentionLayer(16, 11, num_heads=1)  # 1 head, odd channels: the conv model's encoder shape
    layer.absorb = True
    x, inputs = torch.randn(1, 8, 16), torch.randn(1, 50, 11, requires_grad=True)
    used = []
    math_sdpa = S._math_sdpa
    monkeypatch.setattr(S, "_math_sdpa", lambda q: used.append(q.shape) or math_sdpa(q))
    out_math, grads_math = _run(layer, x, inputs)
    assert used == [(1, 1, 8, 11)]
    monkeypatch.setattr(S, "_cpu_math_backward", lambda q, bh, n: False)  # the fused kernel, as before
    used.clear()
    out_fused, grads_fused = _run(layer, x, inputs)
    assert used == []
    torch.testing.assert_close(out_math, out_fused)
    assert grads_math[0].abs().max() > 0
    for a, b in zip(grads_math, grads_fused):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_inputs_with_grad_keep_fused_kernel_when_batch_heads_fill_threads(monkeypatch):
    """As many (batch x heads) as threads: the fused kernel's backward is parallel already (and keeps no matrix)."""
    layer = A.CrossAttentionLayer(16, 11, num_heads=1)
    layer.absorb = True
    b = torch.get_num_threads()
    used = []
    monkeypatch.setattr(S, "_math_sdpa", lambda q: used.append(q.shape) or contextlib.nullcontext())
    layer(torch.randn(b, 8, 16), torch.randn(b, 50, 11, requires_grad=True)).sum().backward()
    assert used == []
