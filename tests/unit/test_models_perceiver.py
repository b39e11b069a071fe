"""Perceiver and Perceiver IO: shapes for every adapter, permutation invariance, weight sharing, gradients,
padding masks, weight-decay groups."""

import pytest
import torch

from perceiver_lit.models import (
    AudioAdapter,
    FourierQueries,
    ImageAdapter,
    MultimodalAdapter,
    MultimodalQueries,
    Perceiver,
    PerceiverConfig,
    PerceiverIO,
    PointCloudAdapter,
    TextAdapter,
    TrainableQueries,
    VideoAdapter,
)
from perceiver_lit.models.position import seeded_permutation

TINY = dict(num_latents=4, latent_dim=16, num_self_attends_per_block=1, num_self_attention_heads=2)


def adapters():
    return {
        "image": (ImageAdapter((6, 5, 3), num_frequency_bands=2), torch.randn(2, 6, 5, 3)),
        "video": (VideoAdapter((2, 4, 4, 3), patch_size=(1, 2, 2), num_frequency_bands=2), torch.randn(2, 2, 4, 4, 3)),
        "audio": (AudioAdapter((64,), samples_per_patch=8, num_frequency_bands=2), torch.randn(2, 64)),
        "mel": (AudioAdapter((5, 4), num_frequency_bands=2), torch.randn(2, 5, 4)),
        "points": (PointCloudAdapter((20, 3), num_frequency_bands=2), torch.randn(2, 20, 3)),
        "text": (TextAdapter((9,), num_channels=8), torch.randint(0, 262, (2, 9))),
        "multimodal": (
            MultimodalAdapter(
                {"video": (2, 4, 4, 3), "audio": (64,)},
                {
                    "video": {"patch_size": (1, 2, 2), "num_frequency_bands": 2},
                    "audio": {"samples_per_patch": 8, "num_frequency_bands": 2},
                },
                modality_dropout={"video": 0.3},
            ),
            {"video": torch.randn(2, 2, 4, 4, 3), "audio": torch.randn(2, 64)},
        ),
    }


@pytest.mark.parametrize("name", list(adapters()))
def test_output_shapes_every_adapter(name):
    adapter, x = adapters()[name]
    p = Perceiver(adapter, num_classes=7, num_cross_attends=2, **TINY)
    assert p(x).shape == (2, 7)
    adapter, x = adapters()[name]
    io = PerceiverIO(adapter, num_classes=7, num_blocks=2, **TINY)
    assert io(x).shape == (2, 7)


def test_perceiver_io_dense_and_multimodal_queries():
    ad = ImageAdapter((4, 4, 3), num_frequency_bands=2)
    io = PerceiverIO(ad, num_classes=5, queries=FourierQueries((4, 4), num_frequency_bands=3), **TINY)
    assert io(torch.randn(2, 4, 4, 3)).shape == (2, 16, 5)  # per-pixel logits
    q = MultimodalQueries({"image": FourierQueries((4, 4), 2), "label": TrainableQueries(1, 6)})
    io = PerceiverIO(ImageAdapter((4, 4, 3), num_frequency_bands=2), num_classes=5, queries=q, **TINY)
    out = io(torch.randn(2, 4, 4, 3))
    assert out.shape == (2, 17, 5) and q.num_channels == 2 * (2 * 2 + 1) + 2
    parts = q.split(out)
    assert parts["image"].shape == (2, 16, 5) and parts["label"].shape == (2, 1, 5)


def test_masked_byte_model_shape_and_padding():
    torch.manual_seed(0)
    ad = TextAdapter((10,), num_channels=8, max_seq_len=16)
    io = PerceiverIO(
        ad,
        num_classes=262,
        queries=TrainableQueries(16, 8, match_input_length=True),
        decoder_num_heads=2,
        decoder_query_residual=False,
        output_head="tied_embedding",
        num_cross_attention_heads=2,
        **TINY,
    ).eval()
    ids = torch.randint(6, 262, (2, 10))
    pad = torch.zeros(2, 10, dtype=torch.bool)
    pad[1, 6:] = True
    logits = io(ids, pad)
    assert logits.shape == (2, 10, 262)
    ids2 = ids.clone()
    ids2[1, 6:] = 0  # change only padded tokens
    torch.testing.assert_close(io(ids2, pad), logits)
    with pytest.raises(ValueError, match="tied_embedding"):
        PerceiverIO(ad, num_classes=100, output_head="tied_embedding", **TINY)


def _copy(dst, src):
    dst.load_state_dict(src.state_dict())
    return dst.eval()


@pytest.mark.parametrize("model_cls", [Perceiver, PerceiverIO])
def test_permutation_invariance(model_cls):
    """Permuting the pixels together with their position features leaves the logits unchanged."""
    torch.manual_seed(0)
    kw = dict(num_classes=5, **TINY)
    plain = model_cls(ImageAdapter((6, 5, 3), num_frequency_bands=3), **kw).eval()
    permuted = _copy(model_cls(ImageAdapter((6, 5, 3), num_frequency_bands=3, permute_seed=5), **kw), plain)
    x = torch.randn(2, 6, 5, 3)
    xs = x.reshape(2, 30, 3)[:, seeded_permutation(30, 5)].reshape(2, 6, 5, 3)
    torch.testing.assert_close(permuted(xs), plain(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain(xs), plain(x), atol=1e-3)  # the positions do matter


def test_point_cloud_invariance_without_seed():
    torch.manual_seed(0)
    m = Perceiver(PointCloudAdapter((30, 3), num_frequency_bands=4, max_frequency=10.0), num_classes=4, **TINY).eval()
    x = torch.rand(2, 30, 3) * 2 - 1
    torch.testing.assert_close(m(x[:, torch.randperm(30)]), m(x), atol=1e-5, rtol=1e-5)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_weight_sharing_parameter_counts():
    def build(**kw):
        return Perceiver(
            ImageAdapter((4, 4, 3), num_frequency_bands=2), num_classes=3, num_cross_attends=4, **TINY, **kw
        )

    shared, unshared = build(), build(share_cross_attends=False, share_latent_blocks=False)
    cross = n_params(shared.cross_attends[0])
    block = n_params(shared.blocks[0])
    assert len(shared.cross_attends) == 2 and len(shared.blocks) == 1
    assert len(unshared.cross_attends) == 4 and len(unshared.blocks) == 4
    assert n_params(unshared) - n_params(shared) == 2 * cross + 3 * block
    assert shared._cross_index == [0, 1, 1, 1] and shared._block_index == [0, 0, 0, 0]
    only_cross = build(share_latent_blocks=False)
    assert n_params(only_cross) - n_params(shared) == 3 * block
    one_cross = Perceiver(
        ImageAdapter((4, 4, 3), num_frequency_bands=2), num_classes=3, num_cross_attends=1, num_blocks=4, **TINY
    )
    assert len(one_cross.cross_attends) == 1 and one_cross._block_index == [0, 0, 0, 0]


def test_shared_cross_attend_is_reused():
    """Steps 2..n call the same module: a hook on it fires n-1 times, the first cross-attend once."""
    m = Perceiver(ImageAdapter((4, 4, 3), num_frequency_bands=2), num_classes=3, num_cross_attends=4, **TINY)
    calls = [0, 0]
    m.cross_attends[0].register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    m.cross_attends[1].register_forward_hook(lambda *a: calls.__setitem__(1, calls[1] + 1))
    m(torch.randn(1, 4, 4, 3))
    assert calls == [1, 3]


@pytest.mark.parametrize("absorb", [False, True])
def test_shared_cross_attend_reuses_kv_exactly(absorb):
    """Reusing the shared cross-attend's k, v projection (or, absorbed, every cross-attend reusing the normalised
    inputs) equals recomputing it at every step."""
    torch.manual_seed(0)
    m = Perceiver(ImageAdapter((4, 4, 3), num_frequency_bands=2), num_classes=3, num_cross_attends=4, **TINY).eval()
    for layer in m.cross_attends:
        layer.absorb = absorb
    x = torch.randn(2, 4, 4, 3)
    e, _ = m.adapter(x)
    z = m.latents.expand(2, -1, -1)
    for i in range(4):
        z = m.blocks[0](m.cross_attends[min(i, 1)](z, e))
    torch.testing.assert_close(m(x), m.head(m.norm(z.mean(1))), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["perceiver", "io", "mlm", "multimodal", "learned_conv"])
def test_every_parameter_gets_a_gradient(kind):
    torch.manual_seed(0)
    if kind == "perceiver":
        m, x = (
            Perceiver(ImageAdapter((4, 4, 3), num_frequency_bands=2), num_classes=3, num_cross_attends=3, **TINY),
            torch.randn(2, 4, 4, 3),
        )
    elif kind == "io":
        m, x = (
            PerceiverIO(ImageAdapter((4, 4, 3), num_frequency_bands=2), num_classes=3, num_blocks=2, **TINY),
            torch.randn(2, 4, 4, 3),
        )
    elif kind == "mlm":
        m = PerceiverIO(
            TextAdapter((6,), num_channels=8),
            num_classes=262,
            output_head="tied_embedding",
            queries=TrainableQueries(6, 8, match_input_length=True),
            decoder_query_residual=False,
            **TINY,
        )
        x = torch.arange(6).repeat(2, 1)
    elif kind == "multimodal":
        m, x = adapters()["multimodal"]
        m = Perceiver(m, num_classes=3, num_cross_attends=2, **TINY)
        x = {k: v for k, v in x.items()}
    else:
        ad = ImageAdapter((8, 8, 3), prep="conv", prep_channels=4, num_frequency_bands=2)
        m, x = PerceiverIO(ad, num_classes=3, **TINY), torch.randn(2, 8, 8, 3)
    m.train()
    if kind == "multimodal":
        m.adapter.modality_dropout = {}  # a dropped modality gets no gradient on purpose
    m(x).float().pow(2).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_no_weight_decay_groups():
    m = PerceiverIO(
        ImageAdapter((4, 4, 3), position_encoding="learned", num_position_channels=4), num_classes=3, **TINY
    )
    nwd = m.no_weight_decay()
    assert {"latents", "queries.queries", "adapter.pos.embeddings", "head.bias", "encoder.norm_q.weight"} <= nwd
    assert "encoder.to_q.weight" not in nwd and "head.weight" not in nwd
    assert nwd <= {n for n, _ in m.named_parameters()}


def test_config_dataclass_round_trip():
    cfg = PerceiverConfig(num_classes=3, num_cross_attends=2, **TINY)
    m = Perceiver.from_config(ImageAdapter((4, 4, 3), num_frequency_bands=2), cfg)
    assert m.config.num_blocks == 2 and m.config.latent_dim == 16 and m.head.out_features == 3
    with pytest.raises(ValueError, match="num_cross_attends"):
        Perceiver(ImageAdapter((4, 4, 3)), num_cross_attends=3, num_blocks=2)


def test_activation_checkpointing_switch():
    m = Perceiver(ImageAdapter((4, 4, 3), num_frequency_bands=2), num_classes=3, activation_checkpointing=True, **TINY)
    layers = [mod for mod in m.modules() if hasattr(mod, "checkpoint") and isinstance(mod.checkpoint, bool)]
    assert layers and all(layer.checkpoint for layer in layers)
    m(torch.randn(2, 4, 4, 3)).sum().backward()
    assert m.latents.grad is not None


@pytest.mark.integration  # ~5 s: most of it is importing and running dynamo once
def test_compiles_without_graph_breaks():
    """fullgraph=True fails on any graph break: position caching and permutation must stay traceable."""
    torch.manual_seed(0)
    m = PerceiverIO(ImageAdapter((4, 4, 3), num_frequency_bands=2, permute_seed=1), num_classes=3, **TINY).eval()
    x = torch.randn(2, 4, 4, 3)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x))


def test_deepmind_initialisation():
    torch.manual_seed(0)
    m = Perceiver(
        ImageAdapter((4, 4, 3), num_frequency_bands=8),
        num_classes=3,
        num_latents=64,
        latent_dim=256,
        num_self_attends_per_block=1,
        num_cross_attends=1,
    )
    w = m.blocks[0][0].to_qkv.weight  # fan_in 256
    assert abs(w.std().item() * 16 - 1) < 0.05 and w.abs().max() <= 2 / 16 / 0.8796 + 1e-6
    assert m.blocks[0][0].to_qkv.bias.abs().sum() == 0
    assert abs(m.latents.std().item() / 0.02 - 0.88) < 0.05 and m.latents.abs().max() <= 0.04  # trunc normal 0.02


def test_subsample_inputs_keeps_a_per_sample_subset_and_prefers_real_elements():
    from perceiver_lit.models.perceiver import subsample_inputs

    torch.manual_seed(0)
    x = torch.arange(2 * 20, dtype=torch.float32).view(2, 20, 1).repeat(1, 1, 3)  # row m of sample b: b*20+m
    out, mask = subsample_inputs(x, None, 0.5)
    assert out.shape == (2, 10, 3) and mask is None
    rows = [set(out[b, :, 0].long().tolist()) for b in range(2)]
    assert all(len(r) == 10 for r in rows)  # no element twice
    assert rows[0] <= set(range(20)) and rows[1] <= set(range(20, 40))  # each sample its own rows
    assert {v - 20 for v in rows[1]} != rows[0]  # drawn per sample
    pad = torch.zeros(2, 20, dtype=torch.bool)
    pad[0, 8:] = True  # sample 0: 8 real elements
    out, mask = subsample_inputs(x, pad, 0.5)
    assert set(range(8)) <= set(out[0, :, 0].long().tolist())  # all 8 real ones kept
    assert mask[0].sum() == 2 and not mask[1].any()
    assert subsample_inputs(x, pad, 1.0)[0] is x


def test_input_keep_subsamples_in_training_only():
    torch.manual_seed(0)
    ad, x = adapters()["image"]
    p = Perceiver(ad, num_classes=7, num_cross_attends=2, input_keep=0.4, **TINY)
    full = Perceiver(ImageAdapter((6, 5, 3), num_frequency_bands=2), num_classes=7, num_cross_attends=2, **TINY)
    full.load_state_dict(p.state_dict())
    p.eval(), full.eval()
    torch.testing.assert_close(p(x), full(x))  # eval sees every pixel
    assert p.flops_per_sample() == full.flops_per_sample()
    p.train(), full.train()
    assert not torch.allclose(p(x), p(x))  # a fresh subset each step
    assert p.flops_per_sample() < full.flops_per_sample()
    p(x).sum().backward()
    assert all(q.grad is not None for q in p.parameters())
    with pytest.raises(ValueError, match="input_keep must be in"):
        Perceiver(ad, num_classes=7, input_keep=0.0, **TINY)


@pytest.mark.parametrize("absorb", [False, True])
def test_activation_checkpointing_changes_no_gradient(absorb):
    """Checkpointed layers recompute in backward, including a cross-attend's cached k/v or normalised inputs."""
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = Perceiver(
            ImageAdapter((4, 4, 3), num_frequency_bands=2),
            num_classes=3,
            num_cross_attends=3,
            activation_checkpointing=ckpt,
            **TINY,
        )
        for layer in m.cross_attends:
            layer.absorb = absorb
        m(torch.randn(2, 4, 4, 3, generator=torch.Generator().manual_seed(1))).square().sum().backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
