"""Audio transforms (resampler, mel filterbank, log-mel, crop/pad, decode) and the AudioDataModule's facts."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import soundfile as sf
import torch

from datamodules.audio import AudioDataModule
from datamodules.buffers import BatchRows
from datamodules.errors import DataError
from datamodules.transforms import audio as A
from tests.fixtures.data import write_tar


def sine(freq: float, sample_rate: int, seconds: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    return torch.sin(2 * math.pi * freq * t).float()


def wav_bytes(wave: np.ndarray, sample_rate: int, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format=fmt)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("orig, new", [(48000, 16000), (16000, 48000), (44100, 48000), (22050, 16000)])
def test_resample_reproduces_an_in_band_sine(orig: int, new: int) -> None:
    y = A.resample(sine(1000, orig), orig, new)
    assert y.shape == (math.ceil(orig // 2 * new / orig),)
    ref = sine(1000, new)[: y.shape[0]]
    edge = new // 50  # the clip's borders see the zero padding
    assert (y - ref)[edge:-edge].abs().max() < 2e-3


def test_resample_rejects_frequencies_above_the_new_nyquist() -> None:
    # 10 kHz cannot exist at 16 kHz (Nyquist 8 kHz): a naive decimation would alias it to 6 kHz at full level
    y = A.resample(sine(10000, 48000), 48000, 16000)
    assert y[300:-300].abs().max() < 0.01
    naive = sine(10000, 48000)[::3]
    assert naive.abs().max() > 0.5  # the test signal itself is not silent after decimation
    passed = A.resample(sine(5000, 48000), 48000, 16000)
    assert passed[300:-300].abs().max() == pytest.approx(1.0, abs=0.01)


def test_resample_keeps_leading_dims_and_identity() -> None:
    x = torch.randn(2, 3, 4800)
    assert A.resample(x, 48000, 16000).shape == (2, 3, 1600)
    assert A.resample(x, 16000, 16000) is x
    with pytest.raises(ValueError, match="positive"):
        A.resample(x, 0, 16000)


# ----------------------------------------------------------------------------------------------- mel
def test_mel_scales_known_values_and_inverse() -> None:
    assert A.hz_to_mel(1000.0, "htk") == pytest.approx(1000.0, abs=0.1)  # the HTK scale is anchored at 1 kHz
    assert A.hz_to_mel(1000.0, "slaney") == pytest.approx(15.0)  # Slaney: 3 mels per 200 Hz below 1 kHz
    assert A.hz_to_mel(6400.0, "slaney") == pytest.approx(15.0 + 27.0)  # 27 mels per factor 6.4 above
    f = np.array([0.0, 50.0, 999.0, 1000.0, 4000.0, 20000.0])
    for scale in ("htk", "slaney"):
        assert np.allclose(A.mel_to_hz(A.hz_to_mel(f, scale), scale), f)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_filters_peak_at_the_mel_centres(scale: str) -> None:
    sr, n_fft, n_mels = 16000, 4096, 40
    fb = A.mel_filterbank(sr, n_fft, n_mels, f_min=50.0, f_max=7600.0, scale=scale, norm=None).numpy()
    assert fb.shape == (n_fft // 2 + 1, n_mels)
    centres = A.mel_to_hz(np.linspace(A.hz_to_mel(50.0, scale), A.hz_to_mel(7600.0, scale), n_mels + 2), scale)[1:-1]
    bin_hz = sr / n_fft
    peaks = fb.argmax(axis=0) * bin_hz
    assert np.all(np.abs(peaks - centres) < bin_hz)  # the peak is one of the two bins around the centre
    assert np.all(fb.max(axis=0) > 1 - bin_hz / np.diff(centres).min())  # ... and close to 1 there
    assert np.all(np.diff(peaks) > 0)


def test_mel_filterbank_matches_a_numpy_reference() -> None:
    """Reference: each triangle by np.interp through (lower, 0), (centre, 1), (upper, 0); Slaney area norm."""
    sr, n_fft, n_mels = 22050, 512, 24
    for scale in ("htk", "slaney"):
        edges = A.mel_to_hz(np.linspace(A.hz_to_mel(0.0, scale), A.hz_to_mel(sr / 2, scale), n_mels + 2), scale)
        freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
        ref = np.stack(
            [
                np.interp(freqs, edges[i : i + 3], [0.0, 1.0, 0.0]) * 2 / (edges[i + 2] - edges[i])
                for i in range(n_mels)
            ],
            axis=1,
        )
        got = A.mel_filterbank(sr, n_fft, n_mels, scale=scale, norm="slaney").numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-8)


def test_log_mel_matches_a_numpy_stft_reference() -> None:
    sr, n_fft, hop, n_mels = 8000, 256, 64, 16
    wave = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    got = A.LogMel(sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels)(wave)
    assert got.shape == (1000 // hop + 1, n_mels) and got.dtype == torch.float32
    x = np.pad(wave.numpy().astype(np.float64), n_fft // 2, mode="reflect")  # torch.stft(center=True)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.stack([x[i * hop : i * hop + n_fft] * window for i in range(got.shape[0])])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    ref = np.log(power @ A.mel_filterbank(sr, n_fft, n_mels).numpy().astype(np.float64) + 1e-6)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-3)


def test_log_mel_of_a_tone_is_loudest_in_its_band() -> None:
    mel = A.LogMel(16000, n_fft=1024, hop_length=160, n_mels=64)
    out = mel(sine(2000, 16000)).mean(0)
    centres = A.mel_to_hz(np.linspace(0, A.hz_to_mel(8000.0), 66))[1:-1]
    assert abs(centres[int(out.argmax())] - 2000) < 150


# ------------------------------------------------------------------------------------------------- crop / decode
def test_crop_or_pad() -> None:
    x = torch.arange(10.0)
    assert torch.equal(A.crop_or_pad(x, 4, train=False), torch.tensor([3.0, 4.0, 5.0, 6.0]))
    starts = {int(A.crop_or_pad(x, 4, train=True, rng=random.Random(s))[0]) for s in range(50)}
    assert starts == set(range(7))  # every start in [0, 10 - 4]
    padded = A.crop_or_pad(x, 13, train=True)
    assert padded.shape == (13,) and torch.equal(padded[:10], x) and not padded[10:].any()
    assert torch.equal(A.crop_or_pad(x, 4, train=True, start=-2), torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert torch.equal(A.crop_or_pad(x, 4, train=True, start=8), torch.tensor([8.0, 9.0, 0.0, 0.0]))


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_decode_audio_mixes_to_mono(fmt: str) -> None:
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1).astype(np.float32)
    wave, sr = A.decode_audio(wav_bytes(stereo, 8000, fmt))
    assert sr == 8000 and wave.shape == (100,) and wave.dtype == np.float32
    assert np.allclose(wave, 0.125, atol=1e-3)


# ------------------------------------------------------------------------------------------------- data module
def test_audio_data_module_facts() -> None:
    raw = AudioDataModule()
    assert raw.input_shape == (61440,) and raw.num_classes == 527 and raw.multilabel  # the paper's AudioSet
    mel = AudioDataModule(features="mel")
    assert mel.input_shape == (61440 // 480 + 1, 128)
    with pytest.raises(ValueError, match="features"):
        AudioDataModule(features="mfcc")
    with pytest.raises(ValueError, match="permute_block does not tile"):
        AudioDataModule(clip_samples=1000, permute_seed=0, permute_block=128)


def test_raw_audio_permutes_blocks_of_samples() -> None:
    dm = AudioDataModule(clip_samples=64, permute_seed=3, permute_block=8)
    x = torch.arange(64.0)
    y = dm.permute_inputs(x)
    blocks = y.reshape(8, 8)
    assert not torch.equal(y, x)
    assert torch.equal(blocks - blocks[:, :1], torch.arange(8.0).expand(8, 8))  # each block kept whole
    assert sorted(blocks[:, 0].tolist()) == list(range(0, 64, 8))
    assert torch.equal(dm.permute_inputs(x), y)  # fixed: the same every call


def test_sample_rate_mismatch_stops_setup_and_resample_fixes_it(tmp_path) -> None:
    url = write_tar(
        str(tmp_path / "a.tar"),
        [{"__key__": f"k{i}", "wav": wav_bytes(sine(440, 8000).numpy(), 8000), "json": b"[1, 3]"} for i in range(2)],
    )
    kw = dict(val_urls=url, sample_rate=16000, clip_samples=4000, num_classes=5, batch_size=2, num_workers=0)
    with pytest.raises(DataError, match="8000 Hz.*sample_rate=16000"):
        AudioDataModule(**kw).setup("validate")
    dm = AudioDataModule(resample=True, **kw)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["inputs"].shape == (2, 4000) and batch["inputs"].dtype == torch.float32
    assert batch["target"].tolist() == [[0, 1, 0, 1, 0]] * 2
    assert batch["inputs"].abs().max() > 0.9  # the 440 Hz tone came through the resampler at full level


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_decode_audio_window_reads_only_the_crop(fmt: str) -> None:
    ramp = (np.arange(4000) / 4000).astype(np.float32)  # sample i holds i / 4000: the values say where we are
    data = wav_bytes(ramp, 8000, fmt)
    wave, sr = A.decode_audio_window(data, lambda rate: rate // 8, train=False)
    assert sr == 8000 and wave.shape == (1000,)
    assert np.allclose(wave, ramp[1500:2500], atol=1e-4)  # centred: (4000 - 1000) // 2
    starts = {
        round(float(A.decode_audio_window(data, lambda rate: 1000, True, random.Random(s))[0][0]) * 4000)
        for s in range(20)
    }
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= 3000
    short, _ = A.decode_audio_window(data, lambda rate: 9000, train=True)
    assert short.shape == (4000,)  # the whole clip; crop_or_pad pads it later


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_decode_audio_window_into_a_row_equals_decode_then_crop(fmt: str) -> None:
    """The batch path (decode straight into a row of the batch buffer) gives what full decode + crop_or_pad
    gives, for eval, seeded train crops and a clip shorter than the window (zero-padded at the end)."""
    rng = np.random.default_rng(0)
    wave = (0.5 * rng.standard_normal(4000)).clip(-1, 1).astype(np.float32)
    data = wav_bytes(wave, 8000, fmt)
    full = torch.from_numpy(A.decode_audio(data)[0])
    for n, train, seed in [(1000, False, 0), (1000, True, 1), (1000, True, 2), (4000, True, 3), (5000, False, 0)]:
        row = np.full(n, 7.0, dtype=np.float32)  # stale values that must all be overwritten
        got, sr = A.decode_audio_window(data, lambda rate, n=n: n, train, random.Random(seed), out=row)
        assert got is row and sr == 8000
        expected = A.crop_or_pad(full, n, train, random.Random(seed))
        assert torch.equal(torch.from_numpy(row), expected)
    stereo = np.stack([wave, -wave], axis=1)  # not mono: `out` is ignored, the mono mix comes back
    got, _ = A.decode_audio_window(wav_bytes(stereo, 8000, fmt), lambda rate: 1000, False, out=row[:1000])
    assert got is not row and got.shape == (1000,) and np.allclose(got, 0, atol=1e-4)


def test_raw_batches_match_per_sample_decoding_with_corrupt_samples(tmp_path) -> None:
    """Raw audio is decoded into rows of the batch buffer; batches equal per-sample decoding whether they were
    handed on in place or stacked after a dropped sample (a bad label after a good decode), corrupt samples are
    still skipped and counted, and the same seed gives the same train batches."""
    rng = np.random.default_rng(1)
    clips = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 2000, 2500, 900, 3000, 2200)]
    samples = [
        {"__key__": f"k{i}", "flac": wav_bytes(c, 8000, "FLAC"), "json": f"[{i}]".encode()} for i, c in enumerate(clips)
    ]
    samples[2]["json"] = b"[-1]"  # decodes, then its label fails: its row is used but it is not in the batch
    samples[3]["flac"] = samples[3]["flac"][:40]  # truncated: fails before taking a row
    url = write_tar(str(tmp_path / "a.tar"), samples)
    kw = dict(sample_rate=8000, clip_samples=2000, num_classes=6, batch_size=2, num_workers=0, shuffle_buffer=4)
    dm = AudioDataModule(val_urls=url, **kw)
    batches = list(dm.val_dataloader())
    assert [b["key"] for b in batches] == [["k0", "k1"], ["k4", "k5"]] and dm.corrupt_samples == 2
    for b in batches:
        assert b["inputs"].shape == (2, 2000) and b["inputs"].dtype == torch.float32
        for key, x in zip(b["key"], b["inputs"]):
            assert torch.equal(x, dm.audio.decode(samples[int(key[1])]["flac"], False))
    runs = []
    for _ in range(2):
        train = AudioDataModule(train_urls=url, samples_per_epoch=6, seed=3, **kw)
        runs.append([b["inputs"].clone() for b in train.train_dataloader()])
    assert len(runs[0]) == 3 and all(torch.equal(a, b) for a, b in zip(*runs))


def test_batch_rows_hand_on_only_the_exact_rows() -> None:
    rows = BatchRows()
    a = rows.commit(rows.next(3, (4,)).fill_(1))
    b = rows.commit(rows.next(3, (4,)).fill_(2))
    batch = rows.take([a, b])
    assert batch is not None and batch.data_ptr() == a.data_ptr() and batch.tolist() == [[1] * 4, [2] * 4]
    c = rows.next(3, (4,))  # the buffer was retired: a new one, the batch is never written again
    assert c.data_ptr() != batch.data_ptr() + 2 * 4 * 4
    rows.next(3, (4,))  # not committed (its sample failed): the same row comes back
    assert rows.next(3, (4,)).data_ptr() == c.data_ptr()
    x, y = rows.commit(c), rows.commit(rows.next(3, (4,)))
    assert rows.take([y, x]) is None  # out of order: the caller stacks
    assert rows.take([torch.zeros(4)]) is None  # nothing handed out since


@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_decode_audio_window_from_a_memoryview_equals_bytes(fmt: str, tmp_path) -> None:
    """A zero-copy buffer (a memoryview of a memory-mapped file) decodes exactly like the same bytes."""
    import mmap

    wave = (0.4 * np.random.default_rng(2).standard_normal(3000)).astype(np.float32)
    data = wav_bytes(wave, 8000, fmt)
    path = tmp_path / "pad.bin"
    path.write_bytes(b"x" * 700 + data + b"y" * 300)  # the clip in the middle of a larger file, like a tar member
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # left to the GC: views of it outlive this block
    view = memoryview(mm)[700 : 700 + len(data)]
    for train, seed in [(False, 0), (True, 5)]:
        got, sr = A.decode_audio_window(view, lambda rate: 1000, train, random.Random(seed))
        ref, _ = A.decode_audio_window(data, lambda rate: 1000, train, random.Random(seed))
        assert sr == 8000 and np.array_equal(got, ref)
    row = np.zeros(1000, np.float32)
    assert A.decode_audio_window(view, lambda rate: 1000, False, out=row)[0] is row
    assert np.array_equal(row, A.decode_audio_window(data, lambda rate: 1000, False)[0])


def test_mel_batches_match_per_sample_log_mel(tmp_path) -> None:
    """Mel features are taken per batch (waveforms decoded into rows, one stft per few clips): the same values as
    the per-sample log-mel, also for a batch stacked after a dropped sample, with corrupt samples still counted."""
    rng = np.random.default_rng(4)
    clips = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (3000, 2000, 2500, 900, 3000, 2200, 2600)]
    samples = [
        {"__key__": f"k{i}", "flac": wav_bytes(c, 8000, "FLAC"), "json": f"[{i % 6}]".encode()}
        for i, c in enumerate(clips)
    ]
    samples[1]["json"] = b"[-1]"  # decodes, then its label fails: the batch is stacked, not handed on in place
    samples[3]["flac"] = samples[3]["flac"][:40]  # truncated
    url = write_tar(str(tmp_path / "a.tar"), samples)
    dm = AudioDataModule(
        val_urls=url,
        sample_rate=8000,
        clip_samples=2000,
        features="mel",
        n_fft=256,
        win_length=200,
        hop_length=80,
        n_mels=16,
        num_classes=6,
        batch_size=3,
        num_workers=0,
    )
    batches = list(dm.val_dataloader())
    assert [b["key"] for b in batches] == [["k0", "k2", "k4"], ["k5", "k6"]] and dm.corrupt_samples == 2
    for b in batches:
        assert b["inputs"].shape == (len(b["key"]), 26, 16) and b["inputs"].dtype == torch.float32
        for key, x in zip(b["key"], b["inputs"]):
            assert torch.allclose(x, dm.audio.decode(samples[int(key[1])]["flac"], False), atol=1e-5)
