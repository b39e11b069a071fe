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
from datamodules.base import DataError
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
        ref = np.stack([np.interp(freqs, edges[i : i + 3], [0.0, 1.0, 0.0]) * 2 / (edges[i + 2] - edges[i])
                        for i in range(n_mels)], axis=1)
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
    url = write_tar(str(tmp_path / "a.tar"), [
        {"__key__": f"k{i}", "wav": wav_bytes(sine(440, 8000).numpy(), 8000), "json": b"[1, 3]"} for i in range(2)])
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
    starts = {round(float(A.decode_audio_window(data, lambda rate: 1000, True, random.Random(s))[0][0]) * 4000)
              for s in range(20)}
    assert len(starts) > 10 and min(starts) >= 0 and max(starts) <= 3000
    short, _ = A.decode_audio_window(data, lambda rate: 9000, train=True)
    assert short.shape == (4000,)  # the whole clip; crop_or_pad pads it later
