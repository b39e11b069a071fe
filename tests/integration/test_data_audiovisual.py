"""Audio+video: synthetic mp4s with both streams (and the separate-key layout) -> shards -> batches of
{"video", "audio"}; the audio window covers exactly the sampled frames' time span."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.audiovisual import AudioVisualDataModule
from datamodules.shards.cli import main
from datamodules.shards.synthetic_media import write_mp4

pytestmark = pytest.mark.integration

LOADER = dict(batch_size=2, num_workers=0, shuffle_buffer=4, mix_batches=1, num_classes=10, multilabel=False)
CLIP = dict(num_frames=8, frame_stride=2, fps=10, sample_rate=16000, crop_size=28, short_side=32)


@pytest.fixture(scope="module", params=["one-mp4", "separate-keys"])
def av_shards(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(request.param)
    extra = ["--separate-audio"] if request.param == "separate-keys" else []
    assert (
        main(
            [
                "synthetic",
                "audiovisual",
                "--out",
                str(out),
                "--num-samples",
                "6",
                "--maxcount",
                "2",
                "--frames",
                "20",
                "--no-progress",
                *extra,
            ]
        )
        == 0
    )
    return out


@pytest.mark.parametrize("features", ["raw", "mel"])
def test_audiovisual_round_trip(av_shards: Path, features: str) -> None:
    mel = dict(n_fft=512, win_length=400, hop_length=160, n_mels=40) if features == "mel" else {}
    dm = AudioVisualDataModule(
        train_urls=str(av_shards / "train-{000000..000001}.tar"),
        val_urls=str(av_shards / "val-000000.tar"),
        features=features,
        **mel,
        **CLIP,
        **{**LOADER, "mix_batches": 3},
    )  # cross-batch mixing of dict inputs too
    audio_shape = (16000 * 16 // 10,) if features == "raw" else (161, 40)  # 8 frames x stride 2 at 10 fps = 1.6 s
    assert dm.input_shape == {"video": (8, 28, 28, 3), "audio": audio_shape}
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["inputs"]) == {"video", "audio"}
    assert batch["inputs"]["video"].shape == (2, 8, 28, 28, 3) and batch["inputs"]["video"].dtype == torch.float32
    assert batch["inputs"]["audio"].shape == (2, *audio_shape) and batch["inputs"]["audio"].dtype == torch.float32
    assert batch["target"].dtype == torch.int64
    val = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in val) == 2 and dm.corrupt_samples == 0
    if features == "raw":
        assert batch["inputs"]["audio"].abs().max() > 0.1  # the spoken digit, not silence


def step_sample(tmp_path: Path, separate: bool) -> dict:
    """4 s at 10 fps: black and silent for 2 s, then white frames and a 440 Hz tone."""
    import soundfile as sf

    fps, n, sr = 10, 40, 16000
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    frames[20:] = 255
    t = np.arange(n * sr // fps) / sr
    audio = np.where(t >= 2.0, 0.5 * np.sin(2 * np.pi * 440 * t), 0.0).astype(np.float32)
    path = tmp_path / "step.mp4"
    write_mp4(path, frames, fps, None if separate else audio, sr)
    sample = {"__key__": "step", "__url__": "test", "mp4": path.read_bytes(), "cls": b"0"}
    if separate:
        sf.write(tmp_path / "step.flac", audio, sr)
        sample["flac"] = (tmp_path / "step.flac").read_bytes()
    return sample


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("sample_rate", [16000, 8000])  # 8000: the mp4's 16 kHz audio resampled on the way
def test_audio_window_matches_the_frames(tmp_path: Path, separate: bool, sample_rate: int) -> None:
    dm = AudioVisualDataModule(**{**CLIP, "sample_rate": sample_rate, "short_side": None}, resample=True, **LOADER)
    sample = step_sample(tmp_path, separate)
    dm.rng = random.Random(0)
    starts = set()
    for train in [False] + [True] * 6:
        out = dm.decode_inputs(sample, train)
        video, audio = out["video"], out["audio"]
        assert audio.shape == (sample_rate * 16 // 10,)
        lit = video.float().mean(dim=(1, 2, 3)) > 127  # (T,): white frames (uint8 before collate)
        # sampled frame k starts slot k (frame_stride / fps = 0.2 s); it is on screen for the slot's first
        # 1 / fps = 0.1 s: the middle of that part must be loud exactly when the frame is white
        slots = audio.reshape(8, -1)
        eighth = slots.shape[1] // 8
        loud = slots[:, eighth : 3 * eighth].abs().amax(dim=1) > 0.1
        assert torch.equal(lit, loud), (train, lit.tolist(), loud.tolist())
        starts.add(int(lit.sum()))
    assert len(starts) > 2  # random starts put the step at different frames, and audio followed each time


def test_mp4_audio_rate_mismatch_stops_setup(av_shards: Path) -> None:
    from datamodules.errors import DataError

    kw = dict(val_urls=str(av_shards / "val-000000.tar"), **{**CLIP, "sample_rate": 22050}, **LOADER)
    with pytest.raises(DataError, match="16000 Hz.*sample_rate=22050"):
        AudioVisualDataModule(**kw).setup("validate")
    dm = AudioVisualDataModule(resample=True, **kw)
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))["inputs"]["audio"].shape == (2, 22050 * 16 // 10)
