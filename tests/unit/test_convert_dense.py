"""HF -> perceiver-lit conversion of the dense-output models (optical flow, multimodal autoencoding), small
configs with random weights: outputs equal HF's in fp32 (eval mode), and the CLI round trip."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceiver_lit.convert import from_huggingface, load_converted, main  # noqa: E402
from perceiver_lit.models import extract_patches  # noqa: E402

from .test_convert import randomise  # noqa: E402

# HF's flow preprocessor has 64 + 258 (64 Fourier bands, hard-coded) = 322 channels: d_model must be 322.
FLOW_SMALL = dict(num_latents=8, d_latents=32, d_model=322, num_blocks=1, num_self_attends_per_block=2,
                  num_self_attention_heads=4, num_cross_attention_heads=1, train_size=[6, 8])


def hf_flow(**overrides):
    torch.manual_seed(0)
    return randomise(transformers.PerceiverForOpticalFlow(transformers.PerceiverConfig(**{**FLOW_SMALL, **overrides})))


def test_extract_patches_layout():
    frames = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).view(1, 2, 4, 5, 3)
    p = extract_patches(frames)                                         # (1, 2, 27, 4, 5)
    assert p.shape == (1, 2, 27, 4, 5)
    # channel (row, col, colour): the centre (1, 1) of each patch is the pixel itself; (0, 0) its up-left neighbour
    torch.testing.assert_close(p[:, :, 12:15].permute(0, 1, 3, 4, 2), frames)
    torch.testing.assert_close(p[0, 1, 0:3, 2, 3], frames[0, 1, 1, 2])
    assert (p[0, :, 0:3, 0, :] == 0).all()                              # zero "SAME" padding above the first row


def test_optical_flow_matches_hf():
    hf = hf_flow()
    ours = from_huggingface(hf)
    assert not ours.training
    frames = torch.randn(2, 2, 6, 8, 3)
    with torch.no_grad():
        ref = hf(inputs=extract_patches(frames)).logits                 # (B, H, W, 2)
        out = ours(frames)
    assert out.shape == ref.shape == (2, 6, 8, 2)
    assert ref.abs().max() > 0.01                                       # a meaningful comparison
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
