"""HF -> perceiver-lit conversion of the dense-output models (optical flow, multimodal autoencoding), small
configs with random weights: outputs equal HF's in fp32 (eval mode), and the CLI round trip."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceiver_lit.convert import from_huggingface, load_converted, main  # noqa: E402
from perceiver_lit.models import extract_patches  # noqa: E402

from .test_convert import randomise  # noqa: E402

# HF's flow preprocessor has 64 + 258 (64 Fourier bands, hard-coded) = 322 channels: d_model must be 322.
FLOW_SMALL = dict(
    num_latents=8,
    d_latents=32,
    d_model=322,
    num_blocks=1,
    num_self_attends_per_block=2,
    num_self_attention_heads=4,
    num_cross_attention_heads=1,
    train_size=[6, 8],
)


def hf_flow(**overrides):
    torch.manual_seed(0)
    return randomise(transformers.PerceiverForOpticalFlow(transformers.PerceiverConfig(**{**FLOW_SMALL, **overrides})))


def test_extract_patches_layout():
    frames = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).view(1, 2, 4, 5, 3)
    p = extract_patches(frames)  # (1, 2, 27, 4, 5)
    assert p.shape == (1, 2, 27, 4, 5)
    # channel (row, col, colour): the centre (1, 1) of each patch is the pixel itself; (0, 0) its up-left neighbour
    torch.testing.assert_close(p[:, :, 12:15].permute(0, 1, 3, 4, 2), frames)
    torch.testing.assert_close(p[0, 1, 0:3, 2, 3], frames[0, 1, 1, 2])
    assert (p[0, :, 0:3, 0, :] == 0).all()  # zero "SAME" padding above the first row


def test_optical_flow_matches_hf():
    hf = hf_flow()
    ours = from_huggingface(hf)
    assert not ours.training
    frames = torch.randn(2, 2, 6, 8, 3)
    with torch.no_grad():
        ref = hf(inputs=extract_patches(frames)).logits  # (B, H, W, 2)
        out = ours(frames)
    assert out.shape == ref.shape == (2, 6, 8, 2)
    assert ref.abs().max() > 0.01  # a meaningful comparison
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_optical_flow_cli_round_trip(tmp_path, capsys):
    hf = hf_flow(num_self_attention_heads=2, cross_attention_widening_factor=2)
    hf.save_pretrained(tmp_path / "hf")
    main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "flow.pt")])
    assert "PerceiverForOpticalFlow" in capsys.readouterr().out
    ours = load_converted(str(tmp_path / "flow.pt"))
    frames = torch.randn(1, 2, 6, 8, 3)
    with torch.no_grad():
        torch.testing.assert_close(ours(frames), hf(inputs=extract_patches(frames)).logits, atol=1e-4, rtol=1e-4)


def test_optical_flow_refuses_unmapped_config():
    hf = transformers.PerceiverForOpticalFlow(transformers.PerceiverConfig(**{**FLOW_SMALL, "num_blocks": 2}))
    with pytest.raises(ValueError, match="num_blocks=2"):
        from_huggingface(hf)


# Multimodal: 2 frames of 8 x 8, 64 audio samples (4 patches of 16), 5 classes. d_model = the widest modality
# (audio: 16 samples + 1 + 2 x 192 Fourier = 401) + 4 padding.
MM_SMALL = dict(
    num_latents=8,
    d_latents=32,
    d_model=405,
    num_blocks=1,
    num_self_attends_per_block=2,
    num_self_attention_heads=4,
    num_cross_attention_heads=1,
    num_labels=5,
    num_frames=2,
    audio_samples_per_frame=32,
    samples_per_patch=16,
    image_size=8,
    output_shape=[1, 2, 8, 8],
    output_num_channels=16,
)


def hf_multimodal(**overrides):
    torch.manual_seed(0)
    cfg = transformers.PerceiverConfig(**{**MM_SMALL, **overrides})
    return randomise(transformers.PerceiverForMultimodalAutoencoding(cfg))


def mm_inputs(batch=2):
    video = torch.randn(batch, 2, 8, 8, 3)
    return {
        "video": video,
        "audio": torch.randn(batch, 64),
        "label": torch.nn.functional.one_hot(torch.arange(batch) % 5, 5).float(),
    }


def hf_mm_forward(hf, x, video_idx, audio_idx):
    inputs = {"image": x["video"].permute(0, 1, 4, 2, 3), "audio": x["audio"][..., None], "label": x["label"]}
    return hf(inputs=inputs, subsampled_output_points={"image": video_idx, "audio": audio_idx}).logits


def test_multimodal_autoencoding_matches_hf():
    hf = hf_multimodal()
    ours = from_huggingface(hf)
    assert not ours.training
    x = mm_inputs()
    with torch.no_grad():
        # HF decodes only through subsampled_output_points: all of them here, then a subset
        ref = hf_mm_forward(hf, x, torch.arange(128), torch.arange(4))
        out = ours(x)
        assert out["video"].shape == (2, 2, 8, 8, 3) and out["audio"].shape == (2, 64) and out["label"].shape == (2, 5)
        assert ref["image"].abs().max() > 0.01
        torch.testing.assert_close(out["video"].reshape(2, 128, 3), ref["image"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["audio"], ref["audio"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out["label"], ref["label"], atol=1e-4, rtol=1e-4)
        v_idx, a_idx = torch.tensor([3, 100, 64, 7]), torch.tensor([2, 0])
        ref = hf_mm_forward(hf, x, v_idx, a_idx)
        sub = ours(x, query_indices={"video": v_idx, "audio": a_idx})
    torch.testing.assert_close(sub["video"], ref["image"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sub["audio"], ref["audio"], atol=1e-4, rtol=1e-4)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_multimodal_autoencoding_cli_round_trip(tmp_path, capsys):
    hf = hf_multimodal()
    hf.save_pretrained(tmp_path / "hf")
    main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "mm.pt")])
    assert "PerceiverForMultimodalAutoencoding" in capsys.readouterr().out
    ours = load_converted(str(tmp_path / "mm.pt"))
    x = mm_inputs(1)
    with torch.no_grad():
        ref, out = hf_mm_forward(hf, x, torch.arange(128), torch.arange(4)), ours(x)
    torch.testing.assert_close(out["video"].reshape(1, 128, 3), ref["image"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["label"], ref["label"], atol=1e-4, rtol=1e-4)


@pytest.mark.integration
def test_optical_flow_real_widths():
    """The released model's widths (2048 x 512 latents, 24 self-attends, 16 heads, 322 channels) on 12 x 16 frames
    (HF reshapes its output to train_size, so train_size is the frame size here; 368 x 496 takes a minute)."""
    hf = hf_flow(
        num_latents=2048, d_latents=512, num_self_attends_per_block=24, num_self_attention_heads=16, train_size=[12, 16]
    )
    ours = from_huggingface(hf)
    assert sum(p.numel() for p in ours.parameters()) == 41_057_134
    frames = torch.randn(1, 2, 12, 16, 3)
    with torch.no_grad():
        ref, out = hf(inputs=extract_patches(frames)).logits, ours(frames)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
def test_multimodal_autoencoding_real_widths():
    """The released model's widths (784 x 512 latents, 8 self-attends, 700 classes, 704 / 1026 channels) on a clip
    of 2 frames of 16 x 16 and 3,840 samples. HF's own init (as the released weights' scale): the small tests'
    perturbation (std 0.1 on every weight) drives these widths' outputs to ~200, where fp32 rounding alone differs
    by 1e-2 (in float64 the two agree to 2e-11 there, so the mapping is exact)."""
    torch.manual_seed(0)
    cfg = transformers.PerceiverConfig(
        **{
            **MM_SMALL,
            **dict(
                num_latents=784,
                d_latents=512,
                d_model=704,
                num_self_attends_per_block=8,
                num_self_attention_heads=8,
                num_labels=700,
                audio_samples_per_frame=1920,
                image_size=16,
                output_shape=[1, 2, 16, 16],
                output_num_channels=512,
            ),
        }
    )
    hf = transformers.PerceiverForMultimodalAutoencoding(cfg).eval()
    ours = from_huggingface(hf)
    x = {"video": torch.randn(1, 2, 16, 16, 3), "audio": torch.randn(1, 3840), "label": torch.zeros(1, 700)}
    with torch.no_grad():
        ref = hf(
            inputs={"image": x["video"].permute(0, 1, 4, 2, 3), "audio": x["audio"][..., None], "label": x["label"]},
            subsampled_output_points={"image": torch.arange(512), "audio": torch.arange(240)},
        ).logits
        out = ours(x)
    assert ref["image"].abs().max() > 0.01 and ref["label"].abs().max() > 0.01  # a meaningful comparison
    torch.testing.assert_close(out["video"].reshape(1, 512, 3), ref["image"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["audio"], ref["audio"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["label"], ref["label"], atol=1e-4, rtol=1e-4)
