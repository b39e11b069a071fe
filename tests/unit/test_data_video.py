"""Video transforms (frame sampling, decode with decord and PyAV, resize/crop/normalise) and the video and
audio+video data modules' facts."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from datamodules.audiovisual import AudioVisualDataModule
from datamodules.shards.synthetic_media import write_mp4
from datamodules.transforms import video as V
from datamodules.video import VideoDataModule


def test_frame_indices_train_eval_and_short_videos() -> None:
    assert V.frame_indices(20, 4, 3, train=False).tolist() == [5, 8, 11, 14]  # span 10, centred in 20
    starts = {int(V.frame_indices(20, 4, 3, True, random.Random(s))[0]) for s in range(200)}
    assert starts == set(range(11))  # every start in [0, 20 - 10]
    assert V.frame_indices(5, 4, 2, train=True).tolist() == [0, 2, 4, 4]  # too short: repeat the last frame
    with pytest.raises(ValueError, match="no frames"):
        V.frame_indices(0, 4, 1, train=False)


def test_resize_crop_normalize() -> None:
    frames = np.zeros((3, 40, 60, 3), dtype=np.uint8)
    frames[:, :, 30:] = 255  # right half white
    x = V.resize_crop_normalize(frames, 16, short_side=20, train=False, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert x.shape == (3, 16, 16, 3) and x.dtype == torch.float32
    assert x[:, :, 0].max() == pytest.approx(-1.0) and x[:, :, -1].min() == pytest.approx(1.0)  # [0,1] -> [-1,1]
    crops = {
        tuple(
            V.resize_crop_normalize(frames, 16, 20, True, random.Random(s), (0.5,) * 3, (0.5,) * 3)[0, 0, :, 0].tolist()
        )
        for s in range(20)
    }
    assert len(crops) > 1  # train crops move
    small = V.resize_crop_normalize(frames[:, :8, :8], 16, short_side=None, train=False)
    assert small.shape == (3, 16, 16, 3)  # too small for the crop: stretched up to it


@pytest.mark.parametrize("size", [32, 16])  # decord 0.6 rejects 16-pixel-wide frames: PyAV takes over
def test_decode_clip_backends_agree(tmp_path, size: int) -> None:
    frames = np.zeros((12, size, size, 3), dtype=np.uint8)
    for t in range(12):
        frames[t] = 20 * t  # frame t has brightness 20 t: the decoded frames tell which were taken
    write_mp4(tmp_path / "v.mp4", frames, fps=10, crf=0)
    data = (tmp_path / "v.mp4").read_bytes()
    clips = {b: V.decode_clip(data, 4, 3, train=False, backend=b) for b in ("decord", "pyav")}
    for clip in clips.values():
        assert clip.frames.shape == (4, size, size, 3) and clip.frames.dtype == np.uint8
        assert clip.indices.tolist() == [1, 4, 7, 10]  # span 10, centred in 12
        assert np.allclose(clip.frames.mean(axis=(1, 2, 3)), 20 * clip.indices, atol=3)
        assert clip.fps == pytest.approx(10.0)
        assert clip.start_time == pytest.approx(clip.indices[0] / 10, abs=1e-3)
    assert np.abs(clips["decord"].frames.astype(int) - clips["pyav"].frames.astype(int)).max() <= 2
    import av

    for backend in ("decord", "pyav"):  # truncated: no moov atom; decord's failure is retried with PyAV
        with pytest.raises(av.error.InvalidDataError, match="Invalid data found when processing input"):
            V.decode_clip(data[: len(data) // 3], 4, 3, train=False, backend=backend)


def test_video_backend_choice() -> None:
    assert V.video_backend("auto") == "decord"
    assert V.video_backend("pyav") == "pyav"
    with pytest.raises(ValueError, match="backend"):
        V.video_backend("opencv")


def test_video_data_module_facts_and_block_permutation() -> None:
    assert VideoDataModule().input_shape == (16, 224, 224, 3)
    dm = VideoDataModule(num_frames=4, crop_size=8, short_side=None, permute_seed=0, permute_block=(2, 4, 4))
    x = torch.arange(4 * 8 * 8, dtype=torch.float32).reshape(4, 8, 8, 1).expand(4, 8, 8, 3).contiguous()
    y = dm.permute_inputs(x)
    assert y.shape == x.shape and not torch.equal(x, y)
    blocks = y.reshape(2, 2, 2, 4, 2, 4, 3).permute(0, 2, 4, 1, 3, 5, 6).reshape(8, -1)
    source = x.reshape(2, 2, 2, 4, 2, 4, 3).permute(0, 2, 4, 1, 3, 5, 6).reshape(8, -1)
    assert sorted(map(tuple, blocks.tolist())) == sorted(map(tuple, source.tolist()))  # 2x4x4 blocks kept whole
    with pytest.raises(ValueError, match="permute_block does not tile"):
        VideoDataModule(num_frames=5, crop_size=8, short_side=None, permute_seed=0, permute_block=(2, 4, 4))


def test_audiovisual_facts_follow_the_paper() -> None:
    dm = AudioVisualDataModule()
    # AudioSet: 32 frames at 25 fps = 1.28 s of video; the matching audio is 61,440 samples at 48 kHz
    assert dm.input_shape == {"video": (32, 224, 224, 3), "audio": (61440,)}
    assert dm.num_classes == 527 and dm.multilabel
    mel = AudioVisualDataModule(
        num_frames=8,
        frame_stride=2,
        fps=10,
        sample_rate=16000,
        features="mel",
        n_fft=512,
        win_length=400,
        hop_length=160,
        n_mels=40,
        crop_size=32,
        short_side=None,
    )
    assert mel.input_shape == {"video": (8, 32, 32, 3), "audio": (16000 * 16 // 10 // 160 + 1, 40)}
    with pytest.raises(ValueError, match="audio_source"):
        AudioVisualDataModule(audio_source="wav")


def test_normalize_into_a_batch_row_matches_the_plain_formula() -> None:
    """normalize(out=) and VideoFrames.collate write each clip into its batch row with exactly the values of
    (x / 255 - mean) / std computed as float(x) * scale + shift (bit for bit, not just close)."""
    g = torch.Generator().manual_seed(0)
    clips = [torch.randint(0, 256, (3, 5, 7, 3), dtype=torch.uint8, generator=g) for _ in range(2)]
    scale = 1.0 / (255.0 * torch.tensor(V.IMAGENET_STD))
    shift = -torch.tensor(V.IMAGENET_MEAN) / torch.tensor(V.IMAGENET_STD)
    expected = torch.stack([c.float() * scale + shift for c in clips])
    assert torch.equal(V.normalize(clips[0]), expected[0])
    row = torch.full((3, 5, 7, 3), float("nan"))
    assert V.normalize(clips[1], out=row) is row and torch.equal(row, expected[1])
    frames = VideoDataModule(num_frames=3, crop_size=4, short_side=None).video
    batch = frames.collate(clips)
    assert batch.dtype == torch.float32 and torch.equal(batch, expected)
    assert torch.equal(V.normalize(clips[0].permute(0, 2, 1, 3)), expected[0].permute(0, 2, 1, 3))  # strided in
    with pytest.raises(ValueError, match="out must be contiguous float32"):
        V.normalize(clips[0], out=torch.empty(3, 5, 7, 3, dtype=torch.float64))
