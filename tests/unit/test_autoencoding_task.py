"""MultimodalAutoencoding's parts on hand-made cases: PSNR, the running mean behind the baselines, the baselines'
definitions, the label masking in eval, and the subsampled training targets."""

from __future__ import annotations

import math

import pytest
import torch

from perceiver_lit.models import build_preset
from perceiver_lit.tasks import MultimodalAutoencoding
from perceiver_lit.tasks.reconstruction_metrics import PSNR, RunningMean


def test_psnr_is_exact_on_hand_made_cases():
    m = PSNR(1.0)
    t = torch.zeros(2, 2)
    m.update(t + 0.1, t)  # squared error 0.01 on 4 elements
    assert float(m.compute()) == pytest.approx(20.0, abs=1e-5)
    m.update(t - 0.3, t)  # 0.09 on 4 more: MSE 0.05 over all 8
    assert float(m.compute()) == pytest.approx(10 * math.log10(1 / 0.05), abs=1e-5)
    audio = PSNR(2.0, clamp=(-1.0, 1.0))  # a waveform's range is 2
    audio.update(torch.tensor([0.2, -0.2, 3.0]), torch.tensor([0.0, 0.0, 1.0]))  # 3.0 clamps to 1.0: no error
    assert float(audio.compute()) == pytest.approx(10 * math.log10(4 / (0.08 / 3)), abs=1e-5)
    exact = PSNR(1.0)
    exact.update(t, t)
    assert math.isinf(float(exact.compute()))
    with pytest.raises(ValueError, match=r"preds \(2, 2\) and target \(4,\) differ"):
        exact.update(t, torch.zeros(4))
    with pytest.raises(ValueError, match="data_range must be > 0"):
        PSNR(0.0)


def test_running_mean_is_the_mean_of_the_samples_seen():
    m = RunningMean((2,))
    m.update(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    m.update(torch.tensor([[5.0, 9.0]]))
    torch.testing.assert_close(m.compute(), torch.tensor([3.0, 5.0]))
    with pytest.raises(ValueError, match=r"samples of shape \(3,\), expected \(2,\)"):
        m.update(torch.zeros(1, 3))


def tiny_task(**kw) -> MultimodalAutoencoding:
    torch.manual_seed(0)
    shape = {"video": (2, 4, 4, 3), "audio": (64,), "label": (5,)}
    net = build_preset(
        "perceiver_io_multimodal_autoencoding",
        input_shape=shape,
        num_latents=4,
        latent_dim=16,
        num_self_attends=1,
        num_self_attention_heads=2,
        decoder_output_channels=8,
        label_query_channels=12,
        mask_probs={"label": 0.5},
    )
    return MultimodalAutoencoding(net, num_classes=5, train_video_queries=6, train_audio_queries=2, **kw)


def batch(n: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "inputs": {"video": torch.rand(n, 2, 4, 4, 3, generator=g), "audio": torch.rand(n, 64, generator=g) * 2 - 1},
        "target": torch.arange(n) % 5,
    }


def test_baselines_are_the_training_mean_clip_and_mean_frame():
    task = tiny_task(video_mean=(0.5, 0.5, 0.5), video_std=(0.25, 0.25, 0.25))
    assert task._baseline_predictions() is None  # nothing trained yet: no baselines
    b = batch()
    task.train()
    task.training_step(b, 0)
    preds = task._baseline_predictions()
    clip = b["inputs"]["video"] * 0.25 + 0.5  # the pixels the data module normalised
    torch.testing.assert_close(preds["video"]["mean_clip"], clip.mean(0))
    torch.testing.assert_close(preds["video"]["mean_frame"], clip.mean((0, 1), keepdim=True)[0].expand(2, 4, 4, 3))
    audio = b["inputs"]["audio"]
    torch.testing.assert_close(preds["audio"]["mean_clip"], audio.mean(0))
    frame = audio.mean(0).view(2, 32).mean(0)  # 2 frames: each one's 32 samples, averaged
    torch.testing.assert_close(preds["audio"]["mean_frame"], frame.repeat(2))


def test_eval_masks_the_label_input_and_decodes_everything():
    task = tiny_task().eval()
    b = batch()
    other = {**b, "target": (b["target"] + 1) % 5}
    with torch.no_grad():
        out, out_other = task.reconstruct(b), task.reconstruct(other)
    assert out["video"].shape == (3, 2, 4, 4, 3) and out["audio"].shape == (3, 64) and out["label"].shape == (3, 5)
    torch.testing.assert_close(out["label"], out_other["label"])  # the label input is unseen in eval
    seen = tiny_task(eval_mask_label=False).eval()
    with torch.no_grad():
        assert not torch.allclose(seen.reconstruct(b)["label"], seen.reconstruct(other)["label"])


def test_bad_settings_and_inputs_fail_naming_the_field():
    with pytest.raises(ValueError, match="loss_weights must give video, audio and label"):
        tiny_task(loss_weights={"video": 1.0})
    with pytest.raises(ValueError, match="video_mean / video_std need 3 channels"):
        tiny_task(video_mean=(0.5,))
    with pytest.raises(ValueError, match=r"batch inputs must be \{'video', 'audio'\}"):
        tiny_task().reconstruct({"inputs": torch.zeros(1, 3), "target": torch.zeros(1, dtype=torch.long)})


def test_the_cli_links_the_label_shape_and_the_video_normalisation():
    from pathlib import Path
    from types import SimpleNamespace

    import yaml

    from perceiver_lit.cli_links import _fact, plan_links

    recipe = Path(__file__).resolve().parents[2] / "configs" / "local" / "multimodal_autoencoding.yaml"
    links = plan_links(yaml.safe_load(recipe.read_text()))
    target = "model.init_args.net.init_args.adapter.init_args.input_shape"
    assert ("input_shape+label", target) in links and ("input_shape", target) not in links
    assert ("video.mean", "model.init_args.video_mean") in links and ("video.std", "model.init_args.video_std") in links
    data = SimpleNamespace(
        input_shape={"video": (4, 8, 8, 3), "audio": (640,)},
        num_classes=10,
        video=SimpleNamespace(mean=[0.5, 0.5, 0.5], std=(0.2, 0.2, 0.2)),
    )
    assert _fact("input_shape+label", target, None)(data) == {"video": (4, 8, 8, 3), "audio": (640,), "label": (10,)}
    assert _fact("video.mean", "model.init_args.video_mean", None)(data) == (0.5, 0.5, 0.5)
    assert _fact("video.std", "model.init_args.video_std", [1.0, 1.0, 1.0])(SimpleNamespace()) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"model.init_args.video_mean=\[0.0, 0.0, 0.0\] contradicts data.video.mean"):
        _fact("video.mean", "model.init_args.video_mean", [0.0, 0.0, 0.0])(data)
