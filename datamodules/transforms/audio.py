"""Audio transforms: decode (soundfile), mono mix, band-limited resampling, crop/pad, log-mel.

Everything here is plain torch/numpy so it runs inside DataLoader workers with no extra dependency
beyond `soundfile` (libsndfile) for decoding. No torchaudio.

Shapes: a waveform is `float32 (S,)` (mono), a log-mel spectrogram is `float32 (F, M)` (frames x mel bins).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------------
# decoding


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode flac/wav/ogg bytes with soundfile; return a mono `float32 (S,)` waveform and its sample rate.

    Multi-channel audio is mixed to mono by averaging the channels (the Perceiver's AudioSet input is mono).
    """
    import soundfile as sf  # imported here so the module imports without libsndfile

    wave, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (S, channels)
    return (wave[:, 0] if wave.shape[1] == 1 else wave.mean(axis=1)), int(sample_rate)


def crop_start(total: int, length: int, train: bool, rng: random.Random | None = None) -> int:
    """Start of a `length` window in `total` samples: random in train, centered in eval, 0 when too short."""
    if total <= length:
        return 0
    return (rng or random).randint(0, total - length) if train else (total - length) // 2


def decode_audio_window(
    data: bytes,
    length: Callable[[int], int],
    train: bool,
    rng: random.Random | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Decode only the crop window: `length(sample_rate)` samples at a random (train) or centered (eval) start.

    Seeks inside the file (sample-accurate for flac and wav), so a 1.28 s crop of a 10 s AudioSet clip decodes
    1.28 s, not 10. `length` maps the file's rate to the window length at that rate (the caller resamples later).
    Returns mono `float32 (<= length,)` and the file's sample rate. `data` may be any buffer (bytes, or a
    memoryview of a memory-mapped shard): only the parts the decoder reads are touched.

    `out`: a contiguous `float32 (length,)` array (e.g. a row of a batch buffer). When the file is mono and the
    window is exactly `len(out)` samples, the window is decoded straight into it, zero-filled past the end of the
    file (what `crop_or_pad` would do), and `out` itself is returned: no per-sample array, no later copy. Otherwise
    `out` is ignored and the result is as without it.
    """
    import soundfile as sf

    with sf.SoundFile(_reader(data)) as f:
        sample_rate, total = int(f.samplerate), int(f.frames)
        n = length(sample_rate)
        start = crop_start(total, n, train, rng)
        if start:
            f.seek(start)
        if out is not None and f.channels == 1 and out.shape == (n,) and out.dtype == np.float32:
            f.read(n, dtype="float32", out=out, fill_value=0.0)
            return out, sample_rate
        wave = f.read(n, dtype="float32", always_2d=True)  # (<= n, channels)
    return (wave[:, 0] if wave.shape[1] == 1 else wave.mean(axis=1)), sample_rate


def _reader(data: bytes | memoryview) -> io.BytesIO | _BufferReader:
    """A file object over `data` for soundfile: BytesIO shares a `bytes` object; for other buffers (which BytesIO
    would copy whole), a reader that copies only the ranges asked for."""
    return io.BytesIO(data) if isinstance(data, bytes) else _BufferReader(data)


class _BufferReader:
    """Seekable read-only file over a buffer (memoryview, mmap slice, bytearray) without copying it."""

    def __init__(self, data: memoryview | bytearray):
        self.data, self.pos = memoryview(data).cast("B"), 0

    def readinto(self, buf: memoryview | bytearray) -> int:
        # soundfile calls this ~17 times per 1.28 s flac crop: kept to one slice and one copy
        chunk = self.data[self.pos : self.pos + len(buf)]  # empty past the end (seek keeps pos >= 0)
        n = len(chunk)
        buf[:n] = chunk  # soundfile's cffi buffer, a bytearray or a byte memoryview
        self.pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n is None or n < 0 else min(len(self.data), self.pos + n)
        out = bytes(self.data[self.pos : end])
        self.pos = max(self.pos, end)
        return out

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: len(self.data)}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos


def to_mono(wave: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """Average a `(S, C)` (or `(C, S)` with `channels_first`) waveform to `float32 (S,)`."""
    if wave.ndim == 1:
        return wave.astype(np.float32, copy=False)
    return wave.mean(axis=0 if channels_first else 1).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------------------------------
# resampling: windowed-sinc, polyphase, as one strided conv1d


@lru_cache(maxsize=16)
def _resample_kernel(orig: int, new: int, zero_crossings: int, rolloff: float, beta: float) -> tuple[torch.Tensor, int]:
    """Polyphase filter bank `(new, 1, taps)` for resampling by `new/orig` (both reduced by their gcd).

    Output sample m sits at input time t = m * orig / new. Writing m = k * new + j, t = k * orig + j * orig / new,
    so phase j is one FIR filter applied at input stride `orig`. Each filter is an ideal low-pass (sinc) at
    `rolloff * min(orig, new) / 2` (below both Nyquist rates, so downsampling does not alias), windowed by a
    Kaiser window spanning `zero_crossings` zero crossings of the sinc on each side.
    """
    cutoff = 0.5 * rolloff * min(1.0, new / orig)  # cycles per input sample
    half_width = zero_crossings / (2 * cutoff)  # in input samples
    reach = math.ceil(half_width)
    d = torch.arange(-reach, reach + orig, dtype=torch.float64)  # input offsets relative to k * orig
    j = torch.arange(new, dtype=torch.float64)[:, None]
    x = j * orig / new - d  # distance from output time to each input sample, (new, taps)
    window = torch.i0(beta * torch.sqrt((1 - (x / half_width) ** 2).clamp(min=0))) / torch.i0(
        torch.tensor(beta, dtype=torch.float64)
    )
    window = torch.where(x.abs() <= half_width, window, torch.zeros_like(window))
    kernel = 2 * cutoff * torch.sinc(2 * cutoff * x) * window
    return kernel.to(torch.float32)[:, None, :], reach


def resample(
    wave: torch.Tensor,
    orig_sr: int,
    new_sr: int,
    zero_crossings: int = 16,
    rolloff: float = 0.945,
    beta: float = 14.77,
) -> torch.Tensor:
    """Band-limited resampling of `wave (..., S)` from `orig_sr` to `new_sr`; returns `(..., ceil(S * new / orig))`.

    A Kaiser-windowed sinc (beta 14.77, about 16 zero crossings: stop-band attenuation near 100 dB beyond the
    transition band) evaluated as a polyphase filter bank with one strided `conv1d`, so the cost is
    `O(S * taps)` for any rational ratio (48k -> 16k: ratio 1/3; 44.1k -> 48k: 160/147).
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wave
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, reach = _resample_kernel(orig, new, zero_crossings, rolloff, beta)
    shape, length = wave.shape[:-1], wave.shape[-1]
    x = wave.reshape(-1, 1, length).to(torch.float32)
    x = F.pad(x, (reach, reach + orig))  # zero padding: the signal is silent outside the clip
    y = F.conv1d(x, kernel.to(x.device), stride=orig)  # (N, new, K): phase j of output block k
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # interleave the phases: m = k * new + j
    out_len = math.ceil(length * new / orig)
    return y[:, :out_len].reshape(*shape, out_len).to(wave.dtype)


# ----------------------------------------------------------------------------------------------------------------------
# cropping


def crop_or_pad(
    wave: torch.Tensor, length: int, train: bool, rng: random.Random | None = None, start: int | None = None
) -> torch.Tensor:
    """Crop `wave (S,)` to `length` samples (random start in train, centered in eval) or zero-pad at the end.

    `start` forces the window start (used to align audio with video frames); the window is then zero-padded
    wherever it runs past the clip.
    """
    n = wave.shape[-1]
    if start is None:
        start = crop_start(n, length, train, rng)
    piece = wave[..., max(start, 0) : max(start + length, 0)]
    left = max(-start, 0)
    right = length - piece.shape[-1] - left
    if left or right:
        piece = F.pad(piece, (left, right))
    return piece


# ----------------------------------------------------------------------------------------------------------------------
# mel spectrogram


def hz_to_mel(freq: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    """Hz -> mel. `htk`: 2595 log10(1 + f/700). `slaney`: linear below 1 kHz (3 per 200 Hz), log above."""
    f = np.asarray(freq, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    if scale != "slaney":
        raise ValueError(f"mel scale must be 'htk' or 'slaney', got {scale!r}")
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = f / f_sp
    log = min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log, linear)


def mel_to_hz(mel: np.ndarray | float, scale: str = "htk") -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    m = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if scale != "slaney":
        raise ValueError(f"mel scale must be 'htk' or 'slaney', got {scale!r}")
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    scale: str = "htk",
    norm: str | None = "slaney",
) -> torch.Tensor:
    """Triangular mel filters `float32 (n_fft // 2 + 1, n_mels)`: power spectrum @ filters -> mel energies.

    The `n_mels + 2` edges are equally spaced on the mel scale between `f_min` and `f_max`; filter i rises
    linearly (in Hz) from edge i to a peak of 1 at edge i+1 and falls to 0 at edge i+2. `norm="slaney"` divides
    each filter by its width in Hz / 2 (constant energy per filter, as librosa's default); `None` keeps peaks at 1.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"mel_filterbank: need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, "
            f"f_max={f_max}, sample_rate={sample_rate}"
        )
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)  # (n_freqs,)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2), scale)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1)
    rising = (fft_freqs[None] - lower) / (center - lower)
    falling = (upper - fft_freqs[None]) / (upper - center)
    fb = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, n_freqs)
    if norm == "slaney":
        fb *= 2.0 / (upper - lower)
    elif norm is not None:
        raise ValueError(f"mel_filterbank: norm must be 'slaney' or None, got {norm!r}")
    return torch.from_numpy(fb.T.astype(np.float32))


class LogMel(torch.nn.Module):
    """Waveform `(..., S)` -> log-mel `(..., F, M)` with torch.stft (Hann window, centered frames).

    F = S // hop_length + 1 frames. `log(mel + eps)`; eps keeps silence finite.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int = 2048,
        win_length: int | None = None,
        hop_length: int = 480,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float | None = None,
        scale: str = "htk",
        norm: str | None = "slaney",
        eps: float = 1e-6,
    ):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.win_length = win_length or n_fft
        if self.win_length > n_fft:
            raise ValueError(f"LogMel: win_length {self.win_length} > n_fft {n_fft}")
        self.eps = eps
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)
        self.register_buffer(
            "filters", mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, scale, norm), persistent=False
        )

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        shape = wave.shape[:-1]
        spec = torch.stft(
            wave.reshape(-1, wave.shape[-1]),
            self.n_fft,
            self.hop_length,
            self.win_length,
            self.window,
            center=True,
            return_complex=True,
        )  # (N, n_freqs, F)
        power = spec.real**2 + spec.imag**2
        mel = power.transpose(1, 2) @ self.filters  # (N, F, M)
        return torch.log(mel + self.eps).reshape(*shape, *mel.shape[1:])
