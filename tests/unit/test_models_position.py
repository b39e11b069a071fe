"""Position features: DeepMind/HF layout, caching, learned tables, seeded permutation."""

import math

import pytest
import torch

from perceiver_lit.models.position import (
    FourierPositionEncoding,
    LearnedPositionEncoding,
    fourier_features,
    grid_positions,
    seeded_permutation,
)


def test_fourier_layout_by_hand():
    # one 1-D point at 0.5, K=2 bands up to res 8 -> f = [1, 4]
    f = fourier_features(torch.tensor([[0.5]]), [4.0], num_bands=2)
    expected = [0.5, math.sin(math.pi * 0.5), math.sin(math.pi * 2.0), math.cos(math.pi * 0.5), math.cos(math.pi * 2.0)]
    torch.testing.assert_close(f[0], torch.tensor(expected))


def test_fourier_matches_hf_layout():
    hf = pytest.importorskip("transformers.models.perceiver.modeling_perceiver")
    enc = FourierPositionEncoding(2, num_bands=64, max_resolution=(224, 224))
    ours = enc((7, 5), torch.device("cpu"), torch.float32)  # (35, 258)
    ref = hf.PerceiverFourierPositionEncoding(64, (224, 224))((7, 5), 1, torch.device("cpu"), torch.float32)[0]
    assert ours.shape == (35, 2 * (2 * 64 + 1)) == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_grid_positions_ij_order():
    pos = grid_positions((2, 3))
    assert pos.shape == (2, 3, 2)
    torch.testing.assert_close(pos[1, 0], torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(pos[0, 2], torch.tensor([-1.0, 1.0]))


def test_fourier_cache_is_reused_and_keyed():
    enc = FourierPositionEncoding(2, num_bands=4)
    a = enc((4, 4), torch.device("cpu"), torch.float32)
    assert enc((4, 4), torch.device("cpu"), torch.float32) is a  # computed once
    b = enc((4, 4), torch.device("cpu"), torch.float64)
    c = enc((2, 8), torch.device("cpu"), torch.float32)
    assert b.dtype == torch.float64 and c.shape == a.shape and not torch.equal(a, c)
    assert len(enc._cache) == 3
    assert "_cache" not in str(enc.state_dict().keys())  # never saved


def test_fourier_cache_filled_under_inference_mode_serves_training():
    """Lightning's sanity check and validation run under torch.inference_mode: a first cache fill there must
    not leave an inference tensor that a later training step's autograd graph would have to save."""
    from perceiver_lit.models import ImageAdapter

    enc = FourierPositionEncoding(2, num_bands=4)
    with torch.inference_mode():
        feats = enc((4, 4), torch.device("cpu"), torch.float32)
    assert not feats.is_inference() and not feats.requires_grad
    # end to end: "add" projects the features with a trainable Linear, which saves them for backward
    adapter = ImageAdapter((4, 4, 3), num_frequency_bands=4, concat_or_add="add")
    x = torch.randn(2, 4, 4, 3)
    with torch.inference_mode():
        adapter(x)
    out = adapter(x)
    out = out[0] if isinstance(out, tuple) else out
    out.square().sum().backward()
    grads = [p.grad for p in adapter.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_fourier_permutation_reorders_rows():
    plain = FourierPositionEncoding(2, num_bands=4)((3, 5), torch.device("cpu"), torch.float32)
    enc = FourierPositionEncoding(2, num_bands=4, permute_seed=7, num_positions=15)
    torch.testing.assert_close(enc((3, 5), torch.device("cpu"), torch.float32), plain[seeded_permutation(15, 7)])
    with pytest.raises(ValueError, match="permutation of 15 positions"):
        enc((4, 4), torch.device("cpu"), torch.float32)


def test_learned_positions_init_and_permutation():
    torch.manual_seed(0)
    pe = LearnedPositionEncoding(100, 8, permute_seed=3)
    assert pe.embeddings.abs().max() <= 0.04 + 1e-6 and 0.01 < pe.embeddings.std() < 0.03
    torch.testing.assert_close(pe(), pe.embeddings[seeded_permutation(100, 3)])
    assert pe(10).shape == (10, 8)
    with pytest.raises(ValueError, match="101 positions"):
        pe(101)
