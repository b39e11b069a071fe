"""Round trips with real media: synthetic files (espeak-ng speech, PIL digits encoded by PyAV) -> shards
(`perceiver-lit-shards synthetic`) -> data module -> batch. Plus corrupt media in a shard, and the point-cloud
and text generators."""

from __future__ import annotations

import csv
import json
import logging
import tarfile
from pathlib import Path

import pytest
import torch

from datamodules.audio import AudioDataModule
from datamodules.shards.cli import main
from datamodules.video import VideoDataModule
from tests.fixtures.data import write_tar

pytestmark = pytest.mark.integration

LOADER = dict(batch_size=3, num_workers=0, shuffle_buffer=4, mix_batches=1, num_classes=10)


def synthetic(out: Path, modality: str, *extra: str, n: int = 8) -> Path:
    assert (
        main(
            [
                "synthetic",
                modality,
                "--out",
                str(out),
                "--num-samples",
                str(n),
                "--maxcount",
                "3",
                "--no-progress",
                *extra,
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def audio_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic(tmp_path_factory.mktemp("audio"), "audio", "--multilabel", "--seconds", "1.0")


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic(tmp_path_factory.mktemp("video"), "video", "--frames", "12", "--size", "32")


def csv_labels(root: Path) -> list[list[int]]:
    with open(root / "files" / "audio" / "labels.csv") as f:
        return [sorted(int(x) for x in row["labels"].split(",")) for row in csv.DictReader(f)]


def test_synthetic_audio_files_are_real_speech(audio_shards: Path) -> None:
    import soundfile as sf

    files = sorted((audio_shards / "files" / "audio").glob("*.flac"))
    assert len(files) == 8
    wave, sr = sf.read(files[0])
    assert sr == 16000 and wave.shape == (16000,)
    loud = abs(wave) > 0.05
    assert 0.1 < loud.mean() < 0.9  # speech somewhere in the clip, silence around it
    assert json.loads((audio_shards / "index.json").read_text())["shards"] == {
        "train-000000.tar": 3,
        "train-000001.tar": 3,
        "val-000000.tar": 2,
    }


def test_audio_raw_round_trip(audio_shards: Path) -> None:
    dm = AudioDataModule(
        train_urls=str(audio_shards / "train-{000000..000001}.tar"),
        val_urls=str(audio_shards / "val-000000.tar"),
        sample_rate=16000,
        clip_samples=12000,
        **LOADER,
    )
    assert dm.input_shape == (12000,) and dm.multilabel
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (3, 12000) and batch["inputs"].dtype == torch.float32
    assert batch["target"].shape == (3, 10) and batch["target"].dtype == torch.float32
    val = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in val) == 2 and dm.corrupt_samples == 0
    targets = [sorted(torch.nonzero(t).flatten().tolist()) for b in val for t in b["target"]]
    expected = csv_labels(audio_shards)
    assert all(t in expected and 1 <= len(t) <= 3 for t in targets)  # multi-hot from the json label lists


def test_audio_mel_round_trip_with_resampling(audio_shards: Path) -> None:
    dm = AudioDataModule(
        val_urls=str(audio_shards / "val-000000.tar"),
        sample_rate=8000,
        resample=True,
        clip_samples=8000,
        features="mel",
        n_fft=256,
        win_length=200,
        hop_length=80,
        n_mels=32,
        **LOADER,
    )
    assert dm.input_shape == (101, 32)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    mel = batch["inputs"]
    assert mel.shape == (2, 101, 32) and mel.dtype == torch.float32 and torch.isfinite(mel).all()
    assert mel.max() - mel.min() > 5  # speech frames stand out from the near-silent ones (log scale)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_round_trip(video_shards: Path, backend: str) -> None:
    dm = VideoDataModule(
        train_urls=str(video_shards / "train-{000000..000001}.tar"),
        val_urls=str(video_shards / "val-000000.tar"),
        num_frames=4,
        frame_stride=2,
        crop_size=28,
        short_side=32,
        backend=backend,
        **LOADER,
    )
    assert dm.input_shape == (4, 28, 28, 3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    x = batch["inputs"]
    assert x.shape == (3, 4, 28, 28, 3) and x.dtype == torch.float32
    assert batch["target"].dtype == torch.int64 and batch["target"].shape == (3,)
    assert -2.2 < x.min() < 0 < x.max() < 2.7  # ImageNet-normalised pixels
    assert (x[:, 0] - x[:, -1]).abs().amax(dim=(1, 2, 3)).min() > 0.1  # the digit moves between frames
    val = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in val) == 2 and dm.corrupt_samples == 0
    folders = sorted(p.name for p in (video_shards / "files" / "video").iterdir())
    assert json.loads((video_shards / "classes.json").read_text()) == folders


def test_corrupt_media_is_skipped_warned_and_counted(
    video_shards: Path, audio_shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mp4 = sorted((video_shards / "files" / "video").rglob("*.mp4"))[0].read_bytes()
    flac = sorted((audio_shards / "files" / "audio").glob("*.flac"))[0].read_bytes()
    video_url = write_tar(
        str(tmp_path / "v.tar"),
        [
            {"__key__": "good0", "mp4": mp4, "cls": "1"},
            {"__key__": "truncated", "mp4": mp4[: len(mp4) // 2], "cls": "1"},
            {"__key__": "good1", "mp4": mp4, "cls": "2"},
            {"__key__": "garbage", "mp4": b"\x00" * 300, "cls": "3"},
        ],
    )
    audio_url = write_tar(
        str(tmp_path / "a.tar"),
        [
            {"__key__": "good0", "flac": flac, "json": "[1]"},
            {"__key__": "truncated", "flac": flac[: len(flac) // 4], "json": "[2]"},  # the crop window is past the cut
            {"__key__": "good1", "flac": flac, "json": "[3]"},
        ],
    )
    caplog.set_level(logging.WARNING, logger="datamodules")
    video = VideoDataModule(val_urls=video_url, num_frames=2, crop_size=16, short_side=None, **LOADER)
    audio = AudioDataModule(val_urls=audio_url, sample_rate=16000, clip_samples=800, **LOADER)
    for dm, corrupt in ((video, 2), (audio, 1)):
        dm.setup("validate")
        keys = [k for b in dm.val_dataloader() for k in b["key"]]
        assert keys == ["good0", "good1"] and dm.corrupt_samples == corrupt
    lines = [r.getMessage() for r in caplog.records if "corrupt sample" in r.getMessage()]
    assert len(lines) == 3
    assert any(f"shard={video_url}" in line and "key=truncated" in line for line in lines)
    assert any(f"shard={audio_url}" in line and "key=truncated" in line for line in lines)


def test_pointcloud_and_text_generators(tmp_path: Path) -> None:
    points = synthetic(tmp_path / "points", "pointcloud", n=10)
    meshes = sorted((points / "files" / "pointcloud").rglob("*.off"))
    assert len(meshes) == 10 and meshes[0].read_text().startswith("OFF")
    counts = json.loads((points / "index.json").read_text())["shards"]
    assert sum(counts.values()) == 10
    text = synthetic(tmp_path / "text", "text", "--languages", "en,de,ru", n=9)
    assert json.loads((text / "classes.json").read_text()) == ["en", "de", "ru"]
    russian = next((text / "files" / "text" / "ru").glob("*.txt")).read_text()
    assert any("\u0400" <= ch <= "\u04ff" for ch in russian)  # Cyrillic: the real fortunes-ru texts
    samples = {}
    for shard in sorted(text.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                samples.setdefault(m.name.split(".")[0], set()).add(m.name.split(".", 1)[1])
    assert len(samples) == 9 and all(exts == {"txt", "cls"} for exts in samples.values())
    # both feed the data-core modules as they are
    from datamodules.pointcloud import PointCloudDataModule
    from datamodules.text import TextDataModule

    for dm, shape in (
        (
            PointCloudDataModule(
                val_urls=str(points / "test-000000.tar"), num_points=256, num_classes=5, batch_size=2, num_workers=0
            ),
            (2, 256, 3),
        ),
        (
            TextDataModule(
                val_urls=str(text / "val-000000.tar"), max_length=64, num_classes=3, batch_size=2, num_workers=0
            ),
            (2, 64),
        ),
    ):
        dm.setup("validate")
        batch = next(iter(dm.val_dataloader()))
        assert tuple(batch["inputs"].shape) == shape and dm.corrupt_samples == 0


def test_pointcloud_npy_generator_writes_shards_directly(tmp_path: Path) -> None:
    points = synthetic(tmp_path / "points", "pointcloud", "--points-format", "npy", "--num-points", "128", n=4)
    counts = json.loads((points / "index.json").read_text())["shards"]
    assert sum(counts.values()) == 4 and set(counts) == {"train-000000.tar", "test-000000.tar"}
    from datamodules.pointcloud import PointCloudDataModule

    dm = PointCloudDataModule(
        val_urls=str(points / "test-000000.tar"), num_points=128, num_classes=5, batch_size=1, num_workers=0
    )
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))["inputs"].shape == (1, 128, 3)


@pytest.mark.parametrize("engine", ["espeak-ng", "flite", "tones"])
def test_speech_engines_speak_deterministically(engine: str) -> None:
    import shutil

    import numpy as np

    from datamodules.shards.synthetic_media import speak_digits

    if engine != "tones" and shutil.which(engine) is None:
        pytest.skip(f"{engine} not installed")
    a = speak_digits([7], 16000, np.random.default_rng(0), engine)
    b = speak_digits([7], 16000, np.random.default_rng(0), engine)
    c = speak_digits([1, 2], 16000, np.random.default_rng(0), engine)
    assert a.dtype == np.float32 and 0.2 * 16000 < len(a) < 3 * 16000  # a word: a fraction of a second or so
    assert np.array_equal(a, b)  # same seed, same sound
    assert len(c) > len(a) and np.abs(a).max() > 0.3
