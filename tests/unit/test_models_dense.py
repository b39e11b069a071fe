"""Dense-output models (issue 17): preset parameter counts (meta device), subsampled and chunked decoding."""

import pytest
import torch

from perceiver_lit.models import FlowPatchAdapter, PerceiverIOFlow, build_preset


def count(m):
    return sum(p.numel() for p in m.parameters())


def test_optical_flow_preset_is_exactly_hf():
    with torch.device("meta"):
        m = build_preset("perceiver_io_optical_flow")
    assert count(m) == 41_057_134  # HF PerceiverForOpticalFlow
    assert m.adapter.num_output_channels == 322 and m.adapter.num_elements == 368 * 496
    assert len(m.processor) == 24 and m.latents.shape == (2048, 512)


def tiny_flow(**kw):
    torch.manual_seed(0)
    adapter = FlowPatchAdapter((2, 6, 7, 3), num_channels=8, num_frequency_bands=4)
    return PerceiverIOFlow(
        adapter, num_latents=4, latent_dim=16, num_self_attends=1, num_self_attention_heads=2, **kw
    ).eval()


def test_flow_subsampled_decode_equals_full_decode_restricted():
    m = tiny_flow()
    frames = torch.randn(2, 2, 6, 7, 3)
    with torch.no_grad():
        full = m(frames).reshape(2, 42, 2)  # (B, HW, 2)
        idx = torch.tensor([41, 0, 17, 5, 17])
        torch.testing.assert_close(m(frames, query_indices=idx), full[:, idx], atol=1e-6, rtol=1e-6)
        per_sample = torch.stack([torch.randperm(42)[:9] for _ in range(2)])  # (B, Q)
        sub = m(frames, query_indices=per_sample)
    torch.testing.assert_close(sub, torch.stack([full[b, per_sample[b]] for b in range(2)]), atol=1e-6, rtol=1e-6)


def test_flow_chunked_decode_equals_unchunked():
    m = tiny_flow(decode_chunk_size=None)
    frames = torch.randn(2, 2, 6, 7, 3)
    with torch.no_grad():
        whole = m(frames)
        m.decoder.chunk_size = 5  # 42 queries: 9 chunks, the last of 2
        chunked = m(frames)
    assert chunked.shape == (2, 6, 7, 2)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)


def test_flow_trains_on_a_query_subset():
    m = tiny_flow().train()
    frames = torch.randn(2, 2, 6, 7, 3)
    out = m(frames, query_indices=torch.randint(0, 42, (2, 10)))  # (B, Q, 2), one pass with autograd
    out.square().mean().backward()
    assert out.shape == (2, 10, 2)
    assert m.adapter.patch_proj.weight.grad.abs().sum() > 0 and m.latents.grad.abs().sum() > 0


def test_flow_correlation_is_each_pixels_matching_cost_against_the_displaced_frame():
    """correlation_radius: channel (dy, dx) at pixel (y, x) is minus the colour-mean of (standardised frame 1 at
    (y, x) - standardised frame 2 at (y + dy, x + dx))^2, frame 2 zero outside; for a shifted copy it peaks at the
    shift."""
    adapter = FlowPatchAdapter((2, 6, 7, 3), num_channels=8, num_frequency_bands=4, correlation_radius=2)
    assert adapter.num_features == 8 + 25 and adapter.num_output_channels == 8 + 25 + adapter.pos.num_channels
    frames = torch.rand(2, 2, 6, 7, 3)
    corr = adapter.correlation(frames).view(2, 6, 7, 5, 5)  # (B, H, W, dy, dx)
    z = (
        [(f - f.mean()) / f.std() for f in frames.unbind(1)[0].unbind(0)],
        [(f - f.mean()) / f.std() for f in frames.unbind(1)[1].unbind(0)],
    )
    for b, y, x, dy, dx in [(0, 0, 0, 0, 0), (1, 3, 4, -2, 1), (0, 5, 6, 1, 1), (1, 2, 2, 2, -2)]:
        inside = 0 <= y + dy < 6 and 0 <= x + dx < 7
        second = z[1][b][y + dy, x + dx] if inside else torch.zeros(3)
        want = -(z[0][b][y, x] - second).square().mean()
        torch.testing.assert_close(corr[b, y, x, dy + 2, dx + 2], want, atol=1e-5, rtol=1e-5)
    big = FlowPatchAdapter((2, 16, 16, 3), num_channels=8, num_frequency_bands=4, correlation_radius=2)
    first = torch.rand(2, 1, 16, 16, 3)
    moved = torch.roll(first, shifts=(1, -1), dims=(2, 3))  # frame 2 = frame 1 moved by (+1, -1)
    corr = big.correlation(torch.cat([first, moved], 1)).view(2, 16, 16, 25)[:, 3:-3, 3:-3]  # away from borders
    assert (corr.mean(dim=(1, 2)).argmax(-1) == (1 + 2) * 5 + (-1 + 2)).all()  # the matching displacement wins
    with pytest.raises(ValueError, match="correlation_radius must be >= 0"):
        FlowPatchAdapter((2, 6, 7, 3), correlation_radius=-1)


def test_flow_correlation_window_and_block_matching_estimate():
    """correlation_window k: each displacement's cost is the mean of the per-pixel costs over the k x k frame-1
    window (fewer pixels at the borders); correlation_estimate: the best displacement's cost (0 for an integer shift
    of noise) and its (dx, dy) / r, the right integer for that shift and sub-pixel accurate for a smooth pattern
    moved by a fraction of a pixel; correlation_volume: false leaves only the estimate."""
    torch.manual_seed(0)
    plain = FlowPatchAdapter((2, 16, 16, 3), num_channels=8, num_frequency_bands=4, correlation_radius=2)
    windowed = FlowPatchAdapter(
        (2, 16, 16, 3), num_channels=8, num_frequency_bands=4, correlation_radius=2, correlation_window=3
    )
    frames = torch.rand(2, 2, 16, 16, 3)
    per_pixel = plain.correlation(frames).view(2, 16, 16, 25)
    window = windowed.correlation(frames).view(2, 16, 16, 25)
    torch.testing.assert_close(window[:, 5, 7], per_pixel[:, 4:7, 6:9].mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(window[:, 0, 0], per_pixel[:, :2, :2].mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)
    block_matching = dict(num_channels=8, num_frequency_bands=4, correlation_radius=3, correlation_window=5)
    est = FlowPatchAdapter((2, 32, 32, 3), **block_matching, correlation_estimate=True)
    assert est.num_features == 8 + 49 + 3
    first = torch.rand(1, 1, 32, 32, 3)
    moved = torch.roll(first, shifts=(-2, 1), dims=(2, 3))  # content moves 2 up and 1 right: flow (1, -2)
    out = est.features(torch.cat([first, moved], 1))[0, :, -3:].view(32, 32, 3)
    assert out[6:-6, 6:-6, 0].abs().max() < 1e-5  # the best displacement's cost: an exact match
    flow = out[..., 1:] * 3  # (dx, dy) in px
    inner = flow[6:-6, 6:-6]  # the best displacement exactly; the parabola through a noise cost's V moves it a bit
    assert (inner.round() == torch.tensor([1.0, -2.0])).all()
    assert (inner - torch.tensor([1.0, -2.0])).abs().max() < 0.2
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")

    def smooth(dx: float, dy: float) -> torch.Tensor:  # a smooth colour pattern moved by (dx, dy)
        u, v = x - dx, y - dy
        return torch.stack([torch.sin(u / 2.1) + torch.cos(v / 1.7), torch.sin((u + v) / 2.5), torch.cos(u / 1.9)], -1)

    pair = torch.stack([smooth(0, 0), smooth(1.3, -0.4)])[None]
    flow = est.estimated_flow(est.features(pair))[0].view(32, 32, 2)
    err = (flow[6:-6, 6:-6] - torch.tensor([1.3, -0.4])).norm(dim=-1)
    assert err.mean() < 0.25, err.mean()  # the best integer displacement alone is 0.5 px off
    lean = FlowPatchAdapter((2, 32, 32, 3), **block_matching, correlation_estimate=True, correlation_volume=False)
    assert lean.num_features == 8 + 3
    lean.load_state_dict(est.state_dict())  # the same patch Linear: the features are est's without the 49 costs
    full = est.features(pair)
    torch.testing.assert_close(lean.features(pair), torch.cat([full[..., :8], full[..., -3:]], -1))
    with pytest.raises(ValueError, match="correlation_volume: false needs correlation_estimate: true"):
        FlowPatchAdapter((2, 6, 7, 3), correlation_radius=1, correlation_volume=False)
    with pytest.raises(ValueError, match="correlation_window must be odd and >= 1"):
        FlowPatchAdapter((2, 6, 7, 3), correlation_radius=1, correlation_window=2)


@pytest.mark.parametrize("estimate", [False, True])
def test_flow_with_correlation_and_query_residual_decodes_subsets_and_chunks_exactly(estimate):
    torch.manual_seed(0)
    adapter = FlowPatchAdapter(
        (2, 6, 7, 3), num_channels=8, num_frequency_bands=4, correlation_radius=1, correlation_estimate=estimate
    )
    m = PerceiverIOFlow(
        adapter,
        num_latents=4,
        latent_dim=16,
        num_self_attends=1,
        num_self_attention_heads=2,
        decoder_query_residual=True,
        estimate_residual=estimate,
        decode_chunk_size=None,
    ).eval()
    assert m.decoder.cross.use_query_residual
    frames = torch.randn(2, 2, 6, 7, 3)
    with torch.no_grad():
        full = m(frames)
        idx = torch.tensor([41, 0, 17, 5])
        torch.testing.assert_close(m(frames, query_indices=idx), full.reshape(2, 42, 2)[:, idx], atol=1e-6, rtol=1e-6)
        per_sample = torch.tensor([[3, 9], [40, 1]])
        torch.testing.assert_close(
            m(frames, query_indices=per_sample),
            full.reshape(2, 42, 2).gather(1, per_sample[..., None].expand(-1, -1, 2)),
        )
        m.decoder.chunk_size = 5
        torch.testing.assert_close(m(frames), full, atol=1e-6, rtol=1e-6)
        if estimate:  # a decoder that outputs zero leaves the block-matching estimate, in pixels / rescale_factor
            m.decoder.head.weight.zero_(), m.decoder.head.bias.zero_()
            est = adapter.features(frames)[..., -2:].view(2, 6, 7, 2) * adapter.correlation_radius
            torch.testing.assert_close(m(frames) * m.config.rescale_factor, est)


def test_flow_estimate_residual_needs_the_adapters_estimate():
    adapter = FlowPatchAdapter((2, 6, 7, 3), num_channels=8, num_frequency_bands=4, correlation_radius=1)
    with pytest.raises(ValueError, match="estimate_residual needs the adapter's block-matching estimate"):
        PerceiverIOFlow(adapter, num_latents=4, latent_dim=16, num_self_attends=1, estimate_residual=True)


def test_flow_rejects_bad_frames():
    with pytest.raises(ValueError, match=r"input_shape must be \(2, H, W, C\)"):
        FlowPatchAdapter((3, 6, 7, 3))
    with pytest.raises(ValueError, match=r"frames must be \(B, 2, H, W, C\)"):
        tiny_flow()(torch.randn(1, 6, 7, 3))


def test_multimodal_autoencoding_preset_is_exactly_hf():
    with torch.device("meta"):
        m = build_preset("perceiver_io_multimodal_autoencoding")
    assert count(m) == 19_858_855  # HF PerceiverForMultimodalAutoencoding
    assert m.adapter.num_output_channels == 704 and m.query_channels == 1026
    assert m.adapter.num_elements == 16 * 56 * 56 + 1920 + 1
    assert m.num_queries("video") == 16 * 224 * 224 and m.num_queries("audio") == 1920


def tiny_autoencoder(**kw):
    torch.manual_seed(0)
    shape = {"video": (2, 8, 8, 3), "audio": (64,), "label": (5,)}
    return build_preset(
        "perceiver_io_multimodal_autoencoding",
        input_shape=shape,
        num_latents=4,
        latent_dim=16,
        num_self_attends=1,
        num_self_attention_heads=2,
        decoder_output_channels=8,
        label_query_channels=12,
        **kw,
    ).eval()


def mm_inputs(batch=2):
    return {
        "video": torch.randn(batch, 2, 8, 8, 3),
        "audio": torch.randn(batch, 64),
        "label": torch.arange(batch) % 5,
    }  # class ids: one-hot inside


def test_autoencoder_subsampled_and_chunked_decode_equal_full_decode():
    m = tiny_autoencoder(decode_chunk_size=None)
    x = mm_inputs()
    with torch.no_grad():
        full = m(x)
        assert full["video"].shape == (2, 2, 8, 8, 3) and full["audio"].shape == (2, 64)
        assert full["label"].shape == (2, 5)
        v_idx = torch.stack([torch.randperm(128)[:10] for _ in range(2)])  # (B, Q) per sample
        a_idx = torch.tensor([3, 1])
        sub = m(x, query_indices={"video": v_idx, "audio": a_idx})
        m.decoder.chunk_size = 7
        chunked = m(x)
    flat = full["video"].reshape(2, 128, 3)
    torch.testing.assert_close(sub["video"], torch.stack([flat[b, v_idx[b]] for b in range(2)]), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        sub["audio"], full["audio"].view(2, 4, 16)[:, a_idx].reshape(2, 32), atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(sub["label"], full["label"], atol=1e-6, rtol=1e-6)
    for k in full:
        torch.testing.assert_close(chunked[k], full[k], atol=1e-6, rtol=1e-6)


def test_autoencoder_label_is_masked_as_hf():
    m = tiny_autoencoder()
    x = mm_inputs()
    with torch.no_grad():
        a = m(x)
        b = m({**x, "label": (x["label"] + 1) % 5})  # label 1.0-masked: the label input is unseen
    torch.testing.assert_close(a["label"], b["label"])
    seen = tiny_autoencoder(mask_probs={})
    with torch.no_grad():
        assert not torch.allclose(seen(x)["label"], seen({**x, "label": (x["label"] + 1) % 5})["label"])


def test_autoencoder_rejects_bad_input():
    m = tiny_autoencoder()
    with pytest.raises(ValueError, match=r"labels must be \(B,\) class ids or \(B, 5\)"):
        m({**mm_inputs(), "label": torch.zeros(2, 7)})
    with pytest.raises(ValueError, match="only 'video' and 'audio' are subsampled"):
        m(mm_inputs(), query_indices={"label": torch.tensor([0])})
    with pytest.raises(ValueError, match="mask_probs names unknown modalities"):
        tiny_autoencoder(mask_probs={"image": 1.0})


def test_random_query_indices_train_on_a_subset_with_matching_targets():
    from perceiver_lit.models import random_query_indices
    from perceiver_lit.models.decoders import take_rows

    g = torch.Generator().manual_seed(0)
    idx = random_query_indices(42, 10, batch_size=2, generator=g)
    assert idx.shape == (2, 10) and all(len(set(row.tolist())) == 10 for row in idx) and int(idx.max()) < 42
    m = tiny_flow().train()
    frames, target = torch.randn(2, 2, 6, 7, 3), torch.randn(2, 6, 7, 2)
    pred = m(frames, query_indices=idx)  # (B, Q, 2)
    loss = (pred - take_rows(target.flatten(1, 2), idx)).square().mean()
    loss.backward()
    with torch.no_grad():
        full = m.eval()(frames).flatten(1, 2)
    torch.testing.assert_close(pred.detach(), take_rows(full, idx), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"num_samples must be in 1\.\.42"):
        random_query_indices(42, 43, batch_size=1)


def test_dense_models_no_weight_decay():
    names = tiny_autoencoder().no_weight_decay()
    assert {"label_query", "latents", "query_padding.video", "mask_tokens.label"} <= names
    assert "latents" in tiny_flow().no_weight_decay()


def test_dense_flops_count_what_runs():
    """The new parts' analytic FLOPs (patching conv, dense decoder with chunks, postprocessors) equal torch's
    FlopCounterMode on a forward at batch 1 (eval: chunked decode, the latents' k, v projected once)."""
    from torch.utils.flop_counter import FlopCounterMode

    flow = tiny_flow(decode_chunk_size=5)
    with FlopCounterMode(display=False) as fc:
        flow(torch.randn(1, 2, 6, 7, 3))
    counts = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    assert counts["PerceiverIOFlow.adapter"] == flow.adapter.flops() > 0
    assert counts["PerceiverIOFlow.decoder"] == flow.decoder.flops(42, 4) > 0

    ae = tiny_autoencoder(decode_chunk_size=7)
    with FlopCounterMode(display=False) as fc:
        ae(mm_inputs(1))
    counts = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
    heads = sum(counts[f"PerceiverIOMultimodalAutoencoder.heads.{n}"] for n in ("audio", "label", "video"))
    assert heads > 0  # the modality heads run per decode chunk, inside the decoder's call: counted there too
    assert counts["PerceiverIOMultimodalAutoencoder.decoder"] == ae.decode_flops() > 0
    assert ae.flops_per_sample() > ae.decode_flops()


@pytest.mark.parametrize("heads, residual", [(1, False), (2, True)])
def test_latent_side_absorbed_decode_equals_the_plain_layer(heads, residual):
    """The decoder's latent-side path (query and output projections folded into the latents' keys and values,
    decoders.LatentSideWeights) gives the plain cross-attend's outputs and gradients, with every LayerNorm affine and
    bias non-trivial; the flow preset takes it, the autoencoder's (wide queries) does not."""
    from perceiver_lit.models.decoders import DenseDecoder

    torch.manual_seed(0)
    dec = DenseDecoder(6, 16, 3, num_heads=heads, use_query_residual=residual)
    with torch.no_grad():
        for p in dec.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    z, q = torch.randn(2, 5, 16), torch.randn(2, 9, 6)
    results = {}
    for absorb in (False, True):
        dec.latent_side_absorb = absorb
        dec.zero_grad()
        zz = z.clone().requires_grad_()
        out = dec(zz, lambda idx: q[:, idx], 9)
        (out * torch.linspace(-1, 1, 27).view(1, 9, 3)).sum().backward()
        results[absorb] = out.detach(), zz.grad, {n: p.grad.clone() for n, p in dec.named_parameters()}
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-5, rtol=1e-5)
    for n, g in results[False][2].items():
        torch.testing.assert_close(results[True][2][n], g, atol=1e-5, rtol=1e-4, msg=n)
    with torch.device("meta"):
        flow, ae = build_preset("perceiver_io_optical_flow"), build_preset("perceiver_io_multimodal_autoencoding")
    flow.eval(), ae.eval()
    assert flow.decoder.absorbs_latent_side(8192, 2048) and not ae.decoder.absorbs_latent_side(8192, 784)
    assert not flow.train().decoder.absorbs_latent_side(8192, 2048)  # training: the plain layer's backend choice


@pytest.mark.parametrize(
    "head, post, widening, approximate",
    [(3, 2, 1, "none"), (4, None, 2, "tanh"), (None, 3, 1, "none"), (None, None, 1, "none")],
)
def test_folded_output_decode_equals_the_plain_layer(head, post, widening, approximate):
    """The decoder's folded output side (decoders.FoldedOutput: output projection, MLP with its LayerNorm, head and
    postprocessor as two matrices) gives the plain layer's outputs, with every LayerNorm affine and bias
    non-trivial and the layer's mean far from 0 (the variance is taken about it)."""
    from torch import nn

    from perceiver_lit.models.decoders import DenseDecoder

    torch.manual_seed(0)
    dec = DenseDecoder(6, 16, head, widening_factor=widening).eval()
    dec.cross.mlp[1].approximate = approximate
    postprocess = nn.Linear(head or 6, post) if post else None
    with torch.no_grad():
        for p in [*dec.parameters(), *(postprocess.parameters() if postprocess else ())]:
            p.add_(torch.randn_like(p) * 0.3)
        dec.cross.proj.bias.add_(5.0)  # a large mean of the layer's output
    z, q = torch.randn(2, 5, 16), torch.randn(2, 9, 6)
    dec.latent_side_absorb = False
    out = {}
    for fold in (False, True):
        dec.fold_output = fold
        with torch.no_grad():
            out[fold] = dec(z, lambda idx: q[:, idx], 9, postprocess=postprocess)
    torch.testing.assert_close(out[True], out[False], atol=1e-5, rtol=1e-5)
    assert dec.folds_output(9, postprocess) and not dec.train().folds_output(9, postprocess)  # eval only


def test_official_autoencoder_folds_its_video_and_audio_decode():
    """By cost: the official autoencoder's video (802,816 pixels) and audio (1,920 patches) decodes fold their
    output side, the label's single query does not; the official flow decoder takes the latent-side path."""
    with torch.device("meta"):
        ae, flow = build_preset("perceiver_io_multimodal_autoencoding"), build_preset("perceiver_io_optical_flow")
    ae.eval(), flow.eval()
    folds = {n: ae.decoder.folds_output(ae.num_queries(n), ae.heads[n]) for n in ae.MODALITIES}
    assert folds == {"video": True, "audio": True, "label": False}
    assert flow.decoder.absorbs_latent_side(182_528, 2048)
