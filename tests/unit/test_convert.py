"""HF -> perceiver-lit conversion at small shapes: logits match in fp32 (eval mode), and the CLI round trip.
Real (released-checkpoint) shapes: tests/integration/test_convert_real_shapes.py."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceiver_lit.convert import from_huggingface, load_converted, main  # noqa: E402

SMALL = dict(
    num_latents=8,
    d_latents=32,
    num_blocks=2,
    num_self_attends_per_block=2,
    num_self_attention_heads=4,
    num_cross_attention_heads=1,
    num_labels=5,
    image_size=16,
)
# d_model = the preprocessor's output channels: pixels + 258 Fourier, conv1x1 256 + 256 positions, conv 64 + 258
IMAGE_CLASSES = {
    "PerceiverForImageClassificationFourier": 261,
    "PerceiverForImageClassificationLearned": 512,
    "PerceiverForImageClassificationConvProcessing": 322,
}


def randomise(model, seed=0):
    """HF's init (std 0.02) gives near-zero logits; perturb so that a wrong mapping cannot pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model.eval()


def hf_image_model(cls_name, **overrides):
    torch.manual_seed(0)
    cfg = transformers.PerceiverConfig(d_model=IMAGE_CLASSES[cls_name], **{**SMALL, **overrides})
    return randomise(getattr(transformers, cls_name)(cfg))


def hf_mlm(**overrides):
    torch.manual_seed(0)
    cfg = transformers.PerceiverConfig(
        **{
            **dict(
                num_latents=8,
                d_latents=32,
                d_model=16,
                num_blocks=1,
                num_self_attends_per_block=2,
                num_self_attention_heads=4,
                num_cross_attention_heads=4,
                qk_channels=16,
                v_channels=32,
                max_position_embeddings=64,
            ),
            **overrides,
        }
    )
    return randomise(transformers.PerceiverForMaskedLM(cfg))


@pytest.mark.parametrize("cls_name", list(IMAGE_CLASSES))
def test_image_models_match_hf(cls_name):
    hf = hf_image_model(cls_name)
    ours = from_huggingface(hf)
    assert not ours.training
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref, out = hf(inputs=x).logits, ours(x.permute(0, 2, 3, 1).contiguous())
    assert ref.abs().max() > 0.1  # a meaningful comparison
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    folded = 0 if "Learned" not in cls_name else 256 * 256 + 256  # HF's position projection, folded in
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters()) - folded


def test_fourier_model_other_image_size_and_heads():
    hf = hf_image_model(
        "PerceiverForImageClassificationFourier",
        num_cross_attention_heads=3,
        d_latents=48,
        cross_attention_widening_factor=2,
        self_attention_widening_factor=3,
    )
    ours = from_huggingface(hf, image_size=12)
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x.permute(0, 2, 3, 1)), hf(inputs=x).logits, atol=1e-4, rtol=1e-4)


def test_masked_lm_matches_hf_with_padding():
    hf = hf_mlm()
    ours = from_huggingface(hf)
    ids = torch.randint(0, 262, (2, 20))
    attn = torch.ones(2, 20, dtype=torch.long)
    attn[1, 13:] = 0
    with torch.no_grad():
        ref = hf(inputs=ids, attention_mask=attn).logits[:, :20]  # HF decodes all 64 query positions
        out = ours(ids, attn == 0)
    assert out.shape == (2, 20, 262)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_unsupported_class_is_refused():
    cfg = transformers.PerceiverConfig(
        num_latents=4,
        d_latents=16,
        d_model=8,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
        num_cross_attention_heads=2,
        max_position_embeddings=8,
        num_labels=2,
    )
    with pytest.raises(ValueError, match="not supported"):
        from_huggingface(transformers.PerceiverModel(cfg))


@pytest.mark.parametrize("kind", ["conv", "mlm"])
def test_cli_round_trip(tmp_path, kind, capsys):
    hf = hf_image_model("PerceiverForImageClassificationConvProcessing") if kind == "conv" else hf_mlm()
    hf.save_pretrained(tmp_path / "hf")
    main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "model.pt")])
    assert "converted" in capsys.readouterr().out
    ours = load_converted(str(tmp_path / "model.pt"))
    with torch.no_grad():
        if kind == "conv":
            x = torch.randn(1, 3, 16, 16)
            ref, out = hf(inputs=x).logits, ours(x.permute(0, 2, 3, 1))
        else:
            ids = torch.randint(0, 262, (1, 10))
            ref, out = hf(inputs=ids).logits[:, :10], ours(ids)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_load_converted_rejects_other_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a perceiver-lit converted checkpoint"):
        load_converted(str(tmp_path / "x.pt"))
