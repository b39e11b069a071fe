"""Reconstructions as media: W&B at validation (ReconstructionMedia) and files at predict (write_reconstructions).

- `ReconstructionMedia`: for the first validation batch of each epoch (rank 0), a task that returns
  reconstructions from `validation_step` (tasks/autoencoding.py: `{"video", "original_video", "audio",
  "original_audio", "label", "target"}`, pixels in [0, 1], waveforms in [-1, 1]) gets, per sample, under
  `val/reconstruction/`: `frames` (a wandb.Image: the original frames in the top row, the reconstruction below),
  `video` (a wandb.Video: original | reconstruction side by side, an mp4 encoded with PyAV: wandb needs no
  moviepy for a file), `audio` and `audio_original` (wandb.Audio). Other tasks: nothing.
- `write_reconstructions`: `perceiver-lit predict` writes `<run dir>/predictions/<key>.mp4` (H.264, the data's
  fps) and `<key>.wav` (16-bit PCM, the data's sample rate) per sample; the JSONL row names both files.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from perceiver_lit.callbacks.media_schedule import logs_media_now

DEFAULT_FPS, DEFAULT_SAMPLE_RATE = 10.0, 16000


def media_rates(trainer: pl.Trainer) -> tuple[float, int]:
    """(fps, sample rate) of the data module's clips (AudioVisualDataModule's `fps`, `sample_rate`)."""
    dm = getattr(trainer, "datamodule", None)
    return float(getattr(dm, "fps", None) or DEFAULT_FPS), int(getattr(dm, "sample_rate", None) or DEFAULT_SAMPLE_RATE)


def to_uint8(video: Tensor) -> np.ndarray:
    """(T, H, W, C) pixels in [0, 1] -> uint8 (T, H, W, 3) (grey channels repeated)."""
    v = (video.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if v.shape[-1] == 1:
        v = v.expand(*v.shape[:-1], 3)
    return v.numpy()


def write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
    """uint8 (T, H, W, 3) -> an H.264 mp4 (yuv420p: odd sizes are padded by one pixel)."""
    import av

    T, H, W, _ = frames.shape
    pad_h, pad_w = H % 2, W % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(path, mode="w") as out:
        stream = out.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = W + pad_w, H + pad_h, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_wav(path: str, audio: Tensor, sample_rate: int) -> None:
    """(S,) waveform in [-1, 1] -> 16-bit PCM wav."""
    import soundfile as sf

    sf.write(path, audio.detach().float().cpu().clamp(-1, 1).numpy(), sample_rate, subtype="PCM_16")


def frame_strip(original: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """Two uint8 (T, H, W, 3) clips -> one (2H, T*W, 3) image: the original's frames above the reconstruction's."""
    row = lambda v: np.concatenate(list(v), axis=1)  # noqa: E731
    return np.concatenate([row(original), row(reconstruction)], axis=0)


def safe_name(key: Any, index: int) -> str:
    """A file name from a sample key (path separators and odd characters become '_')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(key)) if key is not None else ""
    return name.strip("._") or f"sample{index:06d}"


def write_reconstructions(folder: str, prediction: dict, rows: list[dict], fps: float, sample_rate: int) -> None:
    """Write each sample's video (mp4) and audio (wav) reconstruction under `folder`; add their paths to `rows`."""
    os.makedirs(folder, exist_ok=True)
    keys = prediction.get("key") or [None] * len(rows)
    for i, (row, key) in enumerate(zip(rows, keys)):
        name = safe_name(key, i)
        video, audio = os.path.join(folder, name + ".mp4"), os.path.join(folder, name + ".wav")
        write_mp4(video, to_uint8(prediction["video"][i]), fps)
        write_wav(audio, prediction["audio"][i], sample_rate)
        row["video"], row["audio"] = video, audio


class ReconstructionMedia(pl.Callback):
    """Log a task's validation reconstructions beside the originals to W&B (see the module docstring).

    Args:
        every_n_epochs: log at every n-th validation epoch.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        self.every_n_epochs = every_n_epochs

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            not logs_media_now(trainer, batch_idx, dataloader_idx, self.every_n_epochs)
            or not isinstance(outputs, dict)
            or "original_video" not in outputs
        ):
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)
        if logger is None:
            return
        import wandb

        fps, rate = media_rates(trainer)
        names = getattr(pl_module, "class_names", None)
        label = lambda c: names[c] if names and 0 <= c < len(names) else str(c)  # noqa: E731
        frames, videos, audio, audio_original = [], [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for s in range(outputs["video"].shape[0]):
                orig, rec = to_uint8(outputs["original_video"][s]), to_uint8(outputs["video"][s])
                caption = (
                    f"epoch {trainer.current_epoch}, sample {s}: label {label(int(outputs['target'][s]))}, "
                    f"predicted {label(int(outputs['label'][s]))}"
                )
                frames.append(wandb.Image(frame_strip(orig, rec), caption=caption + " (top: original)"))
                path = os.path.join(tmp, f"sample{s}.mp4")
                write_mp4(path, np.concatenate([orig, rec], axis=2), fps)  # side by side
                videos.append(wandb.Video(path, caption=caption + " (left: original)", format="mp4"))
                audio.append(wandb.Audio(outputs["audio"][s].float().cpu().numpy(), sample_rate=rate, caption=caption))
                audio_original.append(
                    wandb.Audio(outputs["original_audio"][s].float().cpu().numpy(), sample_rate=rate, caption=caption)
                )
            # logged while the mp4s exist: wandb copies them into the run's media folder now
            logger.experiment.log(
                {
                    "val/reconstruction/frames": frames,
                    "val/reconstruction/video": videos,
                    "val/reconstruction/audio": audio,
                    "val/reconstruction/audio_original": audio_original,
                    "trainer/global_step": trainer.global_step,
                }
            )
