"""Audio+video -> `{"video": float32 (B, T, H, W, C), "audio": float32 (B, S) or (B, F, M)}`, time-aligned.

Either one mp4 carries both streams (AudioSet clips as downloaded), or the sample holds the video (`mp4`) and the
audio (`flac`/`wav`) under separate keys (`perceiver-lit-shards video --with-audio flac`). The audio window starts
at the presentation time of the first sampled frame and lasts `num_frames * frame_stride / fps` seconds: it
covers exactly the span of the frames the model sees.

Paper (AudioSet, Perceiver): 32 frames at 25 fps = 1.28 s of video with the matching 61,440 samples at 48 kHz.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from datamodules.audio import AUDIO_EXTS, AudioInputs, check_first_rate
from datamodules.buffers import stack
from datamodules.streaming import StreamingDataModule
from datamodules.transforms import audio as A
from datamodules.transforms import video as V
from datamodules.video import VIDEO_EXTS, VideoInputs


class AudioVisualDataModule(AudioInputs, VideoInputs, StreamingDataModule):
    """Time-aligned video + audio clips from one mp4 or from separate keys.

    Args (plus StreamingDataModule's, VideoInputs' and AudioInputs' of video.py / audio.py):
        num_frames, frame_stride: as VideoInputs', with the paper's audio+video defaults (32 frames, every one).
        fps: the nominal frame rate; with num_frames and frame_stride it fixes the audio length
            `clip_samples = round(num_frames * frame_stride / fps * sample_rate)` unless clip_samples is given.
            The window's start always comes from the decoded frames' real timestamps.
        audio_source: "auto" (a flac/wav key when the sample has one, else the mp4's audio stream), "mp4" or "key".
        permute_block: video (t, h, w) blocks; audio_permute_block: raw-audio blocks (samples) for `permute_seed`.
        shuffle_buffer: decoded clips held per worker for shuffling (100 by default: video clips are megabytes).
    """

    input_exts = VIDEO_EXTS

    def __init__(
        self,
        num_frames: int = 32,
        frame_stride: int = 1,
        fps: float = 25.0,
        clip_samples: int | None = None,
        audio_source: str = "auto",
        permute_block: int | tuple[int, int, int] = 1,
        audio_permute_block: int = 1,
        num_classes: int = 527,
        multilabel: bool = True,
        shuffle_buffer: int = 100,
        **kwargs: Any,
    ):
        self.fps = fps  # read by default_clip_samples while AudioInputs builds the audio half
        # MRO: AudioInputs -> VideoInputs -> StreamingDataModule; the video half is built before the audio half
        super().__init__(
            num_frames=num_frames,
            frame_stride=frame_stride,
            clip_samples=clip_samples,
            num_classes=num_classes,
            multilabel=multilabel,
            shuffle_buffer=shuffle_buffer,
            **kwargs,
        )
        if audio_source not in ("auto", "mp4", "key"):
            raise ValueError(f"audio_source must be 'auto', 'mp4' or 'key', got {audio_source!r}")
        self.permute_block = tuple(permute_block) if isinstance(permute_block, (list, tuple)) else permute_block
        self.audio_permute_block, self.audio_source = audio_permute_block, audio_source
        self.input_shape = {"video": self.video.shape, "audio": self.audio.shape}
        self.check_permute_block()

    def default_clip_samples(self, sample_rate: int) -> int:
        """The audio that spans the video clip: `num_frames * frame_stride / fps` seconds."""
        return round(self.video.num_frames * self.video.frame_stride / self.fps * sample_rate)

    def decode_inputs(self, sample: dict[str, Any], train: bool) -> dict[str, torch.Tensor]:
        data = sample[self.find_ext(sample)]
        video, clip = self.video(data, train, self.rng)  # uint8 (T, H, W, C); normalised in collate
        key = next((e for e in AUDIO_EXTS if e in sample), None) if self.audio_source != "mp4" else None
        if key is not None:
            wave, rate = A.decode_audio(sample[key])
            audio_start = 0.0
        elif self.audio_source == "key":
            raise KeyError(f"audio_source='key' but the sample has none of {list(AUDIO_EXTS)}")
        else:
            wave, rate, audio_start = V.decode_mp4_audio(data)
        # cut the frames' span at the file's rate (plus nothing else), then resample that piece to the config rate
        start = round((clip.start_time - audio_start) * rate)
        length = math.ceil(self.clip_samples * rate / self.sample_rate)
        piece = A.crop_or_pad(torch.from_numpy(wave), length, train, start=start)
        audio = self.audio(piece, rate, train, start=0)  # (S,) or (F, M)
        return {"video": video, "audio": audio}

    def collate_inputs(self, inputs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {
            "video": self.video.collate([x["video"] for x in inputs]),  # float32 (B, T, H, W, C)
            "audio": stack([x["audio"] for x in inputs]),
        }

    def permute_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from datamodules.transforms.permute import permute_elements

        audio = inputs["audio"]
        return {
            "video": permute_elements(inputs["video"], self.permute_seed, element_dims=3, block=self.permute_block),
            "audio": permute_elements(
                audio, self.permute_seed, element_dims=audio.ndim, block=self.audio_permute_block
            ),
        }

    def _check_first_sample(self, split: str, urls: list[str]) -> None:
        super()._check_first_sample(split, urls)
        exts = () if self.audio_source == "mp4" else AUDIO_EXTS  # a separate audio key wins, as in decode_inputs
        check_first_rate(self, split, urls, exts + (() if self.audio_source == "key" else VIDEO_EXTS), self.audio)
