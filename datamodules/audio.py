"""Audio (flac/wav) -> raw waveform `float32 (B, S)` or log-mel `float32 (B, F, M)`; AudioSet-style multi-labels.

The paper's AudioSet input: 48 kHz mono, 1.28 s clips = 61,440 samples (32 frames of 40 ms), read either raw
(the adapter cuts 480 patches of 128 samples) or as a mel spectrogram.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from datamodules.buffers import BatchRows, batch_buffer, scratch_buffer
from datamodules.errors import DataError
from datamodules.keywords import declared_defaults, keyword_args
from datamodules.sources import iter_tar_samples
from datamodules.streaming import StreamingDataModule
from datamodules.transforms import audio as A

AUDIO_EXTS = ("flac", "wav", "ogg", "mp3")
_MEL = declared_defaults(A.LogMel)  # AudioInputs' mel defaults are LogMel's, declared there once


class AudioFeatures:
    """The audio half shared by the audio and audio+video data modules: rate check/resampling, crop/pad, features.
    `AudioInputs` declares its settings (types, defaults, meaning) once and builds it.

    Args:
        sample_rate: the rate the model expects.
        clip_samples: the output length S.
        resample: resample clips at another rate (else they raise).
        mel: the log-mel transform for mel features; None: raw waveforms.
    """

    def __init__(self, *, sample_rate: int, clip_samples: int, resample: bool, mel: A.LogMel | None):
        self.sample_rate, self.clip_samples = sample_rate, clip_samples
        self.resample, self.mel = resample, mel
        self.features = "raw" if mel is None else "mel"

    @property
    def shape(self) -> tuple[int, ...]:
        if self.mel is None:
            return (self.clip_samples,)
        return (self.mel.num_frames(self.clip_samples), self.mel.filters.shape[1])

    def to_rate(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        if sample_rate == self.sample_rate:
            return wave
        if not self.resample:
            raise ValueError(
                f"audio is at {sample_rate} Hz, the config says sample_rate={self.sample_rate}; "
                "pass resample=True or re-shard with --sample-rate"
            )
        return A.resample(wave, sample_rate, self.sample_rate)

    def window(self, sample_rate: int) -> int:
        """Samples at `sample_rate` that resample to `clip_samples` at the config rate (checks the rate first)."""
        if sample_rate != self.sample_rate and not self.resample:
            self.to_rate(torch.zeros(0), sample_rate)  # raises the rate-mismatch error
        return math.ceil(self.clip_samples * sample_rate / self.sample_rate)

    def decode(
        self, data: bytes, train: bool, rng: Any = None, out: torch.Tensor | None = None, waveform: bool = False
    ) -> torch.Tensor:
        """flac/wav bytes -> `(S,)` or `(F, M)`, decoding only the crop window.

        `waveform`: stop at the cropped waveform `(S,)` whatever the features (the caller takes the log-mel of
        a whole batch with `mel_batch`). `out`: a contiguous float32 tensor of the output shape (a row of a batch
        buffer) that receives the result, which is then `out` itself; a mono clip at the config rate is decoded
        straight into it (waveforms).
        """
        row = out.numpy() if out is not None and (waveform or self.mel is None) else None  # out is a waveform
        wave, sample_rate = A.decode_audio_window(data, self.window, train, rng, out=row)
        if wave is row and sample_rate == self.sample_rate:
            return out  # decoded, cropped and zero-padded in place
        x = self(torch.from_numpy(wave), sample_rate, train, rng, start=0, waveform=waveform)
        return x if out is None else out.copy_(x)

    def mel_batch(self, waves: torch.Tensor, chunk: int = 4) -> torch.Tensor:
        """Waveforms `(B, S)` -> log-mel `(B, F, M)` in a batch buffer, `chunk` clips per stft: the dozen torch
        calls of a log-mel cost the same for 4 clips as for one (measured at 48 kHz: 820 against 930 us a clip,
        identical values), and 4 clips' stft temporaries (~8 MB) still reuse memory; 8 start to page-fault."""
        out = batch_buffer((len(waves), *self.shape), torch.float32)
        for i in range(0, len(waves), chunk):
            out[i : i + chunk] = self.mel(waves[i : i + chunk])
        return out

    def __call__(
        self,
        wave: torch.Tensor,
        sample_rate: int,
        train: bool,
        rng: Any = None,
        start: int | None = None,
        waveform: bool = False,
    ) -> torch.Tensor:
        """Mono `(S_in,)` at `sample_rate` -> `(S,)` or `(F, M)`. `start`: window start in output-rate samples;
        `waveform`: stop at the cropped `(S,)` whatever the features."""
        wave = A.crop_or_pad(self.to_rate(wave, sample_rate), self.clip_samples, train, rng, start)
        return wave if waveform or self.mel is None else self.mel(wave)


class AudioInputs:
    """The audio settings of a data module, declared once for the audio and the audio+video modules.

    A mixin placed before StreamingDataModule: its arguments stay flat config keys (`data.init_args.sample_rate`),
    and it builds `self.audio` (an `AudioFeatures`) after the base is set up.

    Args:
        sample_rate: the rate the model expects. A clip at another rate is resampled when `resample` is True,
            else it is a corrupt sample (skipped, counted) and a rate mismatch in the first sample stops setup.
        clip_samples: fixed output length S (61,440 = 1.28 s at 48 kHz). None: the module's `default_clip_samples`
            (audio+video: the span of the video clip).
        features: "raw" -> (S,); "mel" -> log-mel (F, M), F = S // hop_length + 1.
        n_fft, win_length, hop_length, n_mels, f_min, f_max, mel_scale ("htk" | "slaney"), mel_norm ("slaney" | None):
            the log-mel settings (defaults at 48 kHz: 25 ms windows, 10 ms hop, 128 mel bins).
    """

    def __init__(
        self,
        sample_rate: int = 48000,
        clip_samples: int | None = 61440,
        resample: bool = False,
        features: str = "raw",
        n_fft: int = _MEL["n_fft"],
        win_length: int | None = 1200,  # 25 ms at 48 kHz; LogMel's default (None) would mean n_fft
        hop_length: int = _MEL["hop_length"],
        n_mels: int = _MEL["n_mels"],
        f_min: float = _MEL["f_min"],
        f_max: float | None = _MEL["f_max"],
        mel_scale: str = _MEL["scale"],
        mel_norm: str | None = _MEL["norm"],
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if clip_samples is None:
            clip_samples = self.default_clip_samples(sample_rate)
        if features not in ("raw", "mel"):
            raise ValueError(f"features must be 'raw' or 'mel', got {features!r}")
        # by keyword: the settings LogMel declares under the same names, and the two named differently here
        mel = (
            A.LogMel(**keyword_args(A.LogMel, locals()), scale=mel_scale, norm=mel_norm) if features == "mel" else None
        )
        self.audio = AudioFeatures(sample_rate=sample_rate, clip_samples=clip_samples, resample=resample, mel=mel)
        self.sample_rate, self.clip_samples = sample_rate, clip_samples

    def default_clip_samples(self, sample_rate: int) -> int:
        raise ValueError(f"{type(self).__name__}: clip_samples must be given (the samples per clip)")


class AudioDataModule(AudioInputs, StreamingDataModule):
    """AudioSet-style audio shards (`perceiver-lit-shards audio`): one flac/wav per sample + `json` labels.

    Args (plus StreamingDataModule's and AudioInputs' above):
        num_classes, multilabel: AudioSet's 527 classes, multi-label (`json` lists -> multi-hot) by default.
        Clips are randomly cropped in training, center-cropped in eval, zero-padded when short.
        permute_block: raw audio permutes blocks of this many samples (set it to the adapter's patch size);
            mel permutes single time-frequency bins (or permute_block x permute_block tiles).
    """

    input_exts = AUDIO_EXTS
    buffer_exts = AUDIO_EXTS  # decode_audio_window reads a memoryview without copying the whole clip

    def __init__(self, num_classes: int = 527, multilabel: bool = True, **kwargs: Any):
        from datamodules.optional import require

        require("soundfile", "datamodules.AudioDataModule")  # without it every flac/wav would be skipped as corrupt
        super().__init__(num_classes=num_classes, multilabel=multilabel, **kwargs)  # AudioInputs: self.audio
        self.features = self.audio.features
        self.input_shape = self.audio.shape
        # mel: the rows are waveforms the batch's log-mel is taken from, never sent on: no shared memory
        self._rows = BatchRows(batch_buffer if self.audio.mel is None else scratch_buffer)
        self.check_permute_block()

    def decode_inputs(self, sample: dict[str, Any], train: bool) -> torch.Tensor:
        data = sample[self.find_ext(sample)]
        if self.permute_seed is not None:  # permuted per sample, so the features are made per sample
            return self.audio.decode(data, train, self.rng)  # (F, M) or (S,)
        # the cropped waveform is decoded straight into the next row of a batch buffer; collate hands the rows
        # on (raw) or takes the log-mel of the whole batch (mel)
        out = self._rows.next(self.batch_size, (self.clip_samples,))
        return self._rows.commit(self.audio.decode(data, train, self.rng, out=out, waveform=True))  # (S,)

    def collate_inputs(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.permute_seed is not None:
            return super().collate_inputs(inputs)  # (B, S) or (B, F, M)
        waves = self._rows.take(inputs)
        if waves is None:  # not the rows handed out, in order (a sample dropped after its decode): copy
            waves = super().collate_inputs(inputs)
        return waves if self.audio.mel is None else self.audio.mel_batch(waves)  # (B, S) or (B, F, M)

    def permute_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        from datamodules.transforms.permute import permute_elements

        # raw (S,): blocks of permute_block samples; mel (F, M): every bin is an element (no channel dim)
        return permute_elements(inputs, self.permute_seed, element_dims=inputs.ndim, block=self.permute_block)

    def _check_first_sample(self, split: str, urls: list[str]) -> None:
        """Besides the base's key check: a first clip at the wrong rate (and resample=False) stops setup here,
        rather than every sample being skipped as corrupt."""
        super()._check_first_sample(split, urls)
        check_first_rate(self, split, urls, self.input_exts, self.audio)


def check_first_rate(
    dm: StreamingDataModule, split: str, urls: list[str], exts: tuple[str, ...], audio: AudioFeatures
) -> None:
    """Read the first sample's audio header (soundfile; PyAV for audio inside an mp4) and compare its rate with
    the config: a mismatch would otherwise make every sample a skipped corrupt one."""
    if audio.resample or not urls or "://" in urls[0] or urls[0].startswith("pipe:"):
        return
    import io

    try:
        raw = next(iter_tar_samples(urls[0], lambda *a: None), None)
    except Exception:  # noqa: BLE001 - the base check already reported unopenable shards
        return
    if raw is None:
        return
    ext = next((e for e in exts if e in raw), None)
    try:
        if ext in AUDIO_EXTS:
            import soundfile as sf

            rate = sf.info(io.BytesIO(raw[ext])).samplerate
        elif ext is not None:  # an audio stream inside a video container
            import av

            with av.open(io.BytesIO(raw[ext])) as container:
                if not container.streams.audio:
                    return
                rate = container.streams.audio[0].rate
        else:
            return
    except Exception:  # noqa: BLE001 - a corrupt first sample is the streaming code's business
        return
    if rate != audio.sample_rate:
        raise DataError(
            f"{split} shard {urls[0]!r} key {raw['__key__']!r}: audio at {rate} Hz, config "
            f"sample_rate={audio.sample_rate}; set resample=True or sample_rate={rate}"
        )
