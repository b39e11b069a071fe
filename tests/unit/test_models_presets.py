"""Presets: the papers' parameter and FLOP counts (built on the meta device: no memory, no init cost)."""

import pytest
import torch

from perceiver_lit.models import build_preset, perceiver_imagenet, perceiver_io_imagenet
from perceiver_lit.models.attention import projected_cross_attention


def count(m):
    return sum(p.numel() for p in m.parameters())


def meta(fn, **kw):
    with torch.device("meta"):
        return fn(**kw)


def test_perceiver_io_imagenet_is_exactly_hf_vision_perceiver_fourier():
    m = meta(perceiver_io_imagenet)
    assert count(m) == 48_440_627
    assert m.adapter.num_output_channels == 261 and m.adapter.num_elements == 224 * 224
    executed = m.flops_per_sample()
    with projected_cross_attention(m):  # the papers count k, v projected from every input
        textbook = m.flops_per_sample()
    assert abs(textbook / 407e9 - 1) < 0.01  # paper: 407B FLOPs
    # as run: the encoder never projects the 50,176 inputs, the one-query decoder never projects the 512 latents
    n, inputs, c, d = 512, 224 * 224, 261, 1024
    encoder_saving = 2 * (inputs * c * 2 * c - 2 * n * c * c)
    decoder_saving = 2 * (n * d * 2 * d - 2 * d * d)
    latent_queries = 2 * (n * d * c + n * c * c)  # projected once per batch, not per sample
    assert executed == textbook - encoder_saving - decoder_saving - latent_queries


def test_perceiver_imagenet_counts_and_sharing():
    m = meta(perceiver_imagenet)
    assert round(count(m) / 1e6, 1) == 44.9  # paper: 44.9M
    unshared = meta(perceiver_imagenet, share_cross_attends=False, share_latent_blocks=False)
    assert round(count(unshared) / 1e6, 1) == 326.2  # paper: 326.2M without sharing
    executed = m.flops_per_sample()
    # the paper's 707.2B projects k, v at all 8 cross-attends; the shared cross-attend does it once for 2..8
    with projected_cross_attention(unshared), projected_cross_attention(m):
        assert abs(unshared.flops_per_sample() / 707.2e9 - 1) < 0.01
        kv = 2 * 224 * 224 * 261 * (2 * 261)
        textbook = m.flops_per_sample()
        assert textbook == unshared.flops_per_sample() - 6 * kv
    # as run, no cross-attend projects the inputs; each pays q W_k and P x_hat W_v^T per latent instead; the
    # first one's queries (the latents, the same for every sample) are projected once per batch
    latent_queries = 2 * (512 * 1024 * 261 + 512 * 261 * 261)
    assert executed == textbook - 2 * kv + 8 * 2 * (2 * 512 * 261 * 261) - latent_queries


@pytest.mark.parametrize(
    "name,shape,kw,out",
    [
        ("perceiver_audioset", {"video": (4, 16, 16, 3), "audio": (1280,)}, {}, (1, 527)),
        ("perceiver_audioset", (4, 8), {}, (1, 527)),
        ("perceiver_modelnet40", (64, 3), {}, (1, 40)),
        ("perceiver_io_language", (32,), {}, (1, 32, 262)),
        ("perceiver_imagenet", (8, 8, 3), {"num_classes": 10}, (1, 10)),
    ],
)
def test_presets_build_and_run_small(name, shape, kw, out):
    torch.manual_seed(0)
    small = dict(num_latents=4, latent_dim=16, num_self_attends_per_block=1)
    if name == "perceiver_io_language":
        small = dict(num_latents=4, num_self_attends_per_block=1)  # the HF widths are fixed by the byte embedding
    m = build_preset(name, input_shape=shape, **small, **kw).eval()
    if isinstance(shape, dict):
        x = {k: torch.randn(1, *s) for k, s in shape.items()}
    elif name == "perceiver_io_language":
        x = torch.randint(0, 262, (1, *shape))
    else:
        x = torch.randn(1, *shape)
    with torch.no_grad():
        assert m(x).shape == out


def test_preset_structures_match_paper():
    audioset = meta(build_preset, name="perceiver_audioset")
    assert len(audioset.cross_attends) == 2 and len(audioset.blocks) == 2 and len(audioset.blocks[0]) == 8
    assert audioset.adapter.modality_dropout == {"video": 0.3}
    assert audioset.adapter.adapters["audio"].num_elements == 480  # 61,440 samples / 128
    assert audioset.adapter.adapters["video"].num_elements == 12_544  # 32x224x224 in 2x8x8 patches
    modelnet = meta(build_preset, name="perceiver_modelnet40")
    assert modelnet.adapter.num_output_channels == 3 + 2 * 3 * 64
    lang = meta(build_preset, name="perceiver_io_language")
    assert count(lang) == 201_108_230
    with pytest.raises(ValueError, match="Unknown preset"):
        build_preset("resnet")
