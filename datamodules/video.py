"""Video (mp4) -> `float32 (B, T, H, W, C)`: T frames at a stride, resized, cropped, normalised, channels-last."""

from __future__ import annotations

from typing import Any

import torch

from datamodules.buffers import batch_buffer
from datamodules.keywords import keyword_args
from datamodules.streaming import StreamingDataModule
from datamodules.transforms import video as V

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")


class VideoFrames:
    """The video half shared by the video and audio+video data modules: decode, sample frames, resize/crop/normalise.
    Its settings are declared (types, defaults, meaning) once, in `VideoInputs`."""

    def __init__(
        self,
        *,
        num_frames: int,
        frame_stride: int,
        crop_size: int,
        short_side: int | None,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        backend: str,
    ):
        if num_frames < 1 or frame_stride < 1:
            raise ValueError(f"num_frames and frame_stride must be >= 1, got {num_frames}, {frame_stride}")
        if short_side is not None and short_side < crop_size:
            raise ValueError(f"short_side {short_side} < crop_size {crop_size}")
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.crop_size, self.short_side = crop_size, short_side
        self.mean, self.std = tuple(mean), tuple(std)
        self.backend = V.video_backend(backend)  # fails here, at config time, when neither decoder is installed

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.num_frames, self.crop_size, self.crop_size, len(self.mean))

    def __call__(self, data: bytes, train: bool, rng: Any = None) -> tuple[torch.Tensor, V.Clip]:
        """mp4 bytes -> `uint8 (T, H, W, C)` resized and cropped, and the decoded clip (for its timestamps).

        Pixels stay uint8 per sample (a quarter of the bytes of a 9.6 MB 16 x 224 x 224 x 3 float clip while it
        waits for its batch); `collate` converts and normalises each clip straight into the float32 batch.
        """
        clip = V.decode_clip(data, self.num_frames, self.frame_stride, train, rng, self.backend)
        return V.resize_crop(clip.frames, self.crop_size, self.short_side, train, rng), clip

    def collate(self, clips: list[torch.Tensor]) -> torch.Tensor:
        """B clips `uint8 (T, H, W, C)` -> the normalised batch `float32 (B, T, H, W, C)`, each clip written
        straight into its row of the batch buffer (no uint8 stack, no batch-sized temporaries)."""
        out = batch_buffer((len(clips), *clips[0].shape), torch.float32)
        for clip, row in zip(clips, out):
            V.normalize(clip, self.mean, self.std, out=row)
        return out


class VideoInputs:
    """The video settings of a data module, declared once for the video and the audio+video modules.

    A mixin placed before StreamingDataModule: its arguments stay flat config keys (`data.init_args.num_frames`),
    and it builds `self.video` (a `VideoFrames`) after the base is set up.

    Args:
        num_frames: T frames per clip.
        frame_stride: take every `frame_stride`-th frame (random start in train, centered in eval).
        crop_size: output H = W after cropping (random crop in train, center crop in eval).
        short_side: resize the short side to this first (None: no resize; crop from the decoded size).
        mean, std: per-channel normalisation of [0, 1] pixels (ImageNet's by default).
        backend: "auto" (decord, else PyAV), "decord" or "pyav".
    """

    def __init__(
        self,
        num_frames: int = 16,
        frame_stride: int = 2,
        crop_size: int = 224,
        short_side: int | None = 256,
        mean: tuple[float, ...] = V.IMAGENET_MEAN,
        std: tuple[float, ...] = V.IMAGENET_STD,
        backend: str = "auto",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.video = VideoFrames(**keyword_args(VideoFrames, locals()))  # every setting above, by its name


class VideoDataModule(VideoInputs, StreamingDataModule):
    """Video shards (`perceiver-lit-shards video`): one mp4 per sample + `cls`/`json` labels.

    Args (plus StreamingDataModule's and VideoInputs' above):
        permute_block: blocks of (t, h, w) voxels that `permute_seed` shuffles (an int: the same per dim);
            set it to the adapter's space-time patch (the paper's 2x8x8) so the two agree.
        shuffle_buffer: decoded clips held per worker for shuffling; 100 uint8 16x224x224x3 clips are 240 MB
            (the base's image-sized default of 1000 would be 2.4 GB per worker).
    """

    input_exts = VIDEO_EXTS

    def __init__(
        self,
        permute_block: int | tuple[int, int, int] = 1,
        num_classes: int = 400,
        shuffle_buffer: int = 100,
        **kwargs: Any,
    ):
        super().__init__(num_classes=num_classes, shuffle_buffer=shuffle_buffer, **kwargs)  # VideoInputs: self.video
        self.permute_block = tuple(permute_block) if isinstance(permute_block, (list, tuple)) else permute_block
        self.input_shape = self.video.shape
        self.check_permute_block()

    def decode_inputs(self, sample: dict[str, Any], train: bool) -> torch.Tensor:
        return self.video(sample[self.find_ext(sample)], train, self.rng)[0]  # uint8 (T, H, W, C)

    def collate_inputs(self, clips: list[torch.Tensor]) -> torch.Tensor:
        return self.video.collate(clips)  # float32 (B, T, H, W, C)

    def permute_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        from datamodules.transforms.permute import permute_elements

        return permute_elements(inputs, self.permute_seed, element_dims=3, block=self.permute_block)
