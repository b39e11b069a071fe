"""Optical flow: frame pairs + flow -> `{"inputs": float32 (B, 2, H, W, 3) in [-1, 1], "target": float32 (B, H, W, 2),
"valid": bool (B, H, W), "key": list[str]}`.

Shards from `perceiver-lit-shards flow ...` or `synthetic flow` (docs/data.md): per sample `frame1.png`,
`frame2.png` (or `.jpg`), `flow.npy` (float32 (H, W, 2), pixels, (u, v) = (x, y) displacement of each pixel of
frame 1 in frame 2) and optionally `valid.png` (nonzero = the pixel has ground truth; KITTI's mask). The frames
are scaled to [-1, 1] as DeepMind's flow model expects; `valid` is all True where the sample has no mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamodules.buffers import batch_buffer
from datamodules.streaming import StreamingDataModule
from datamodules.transforms import flow as F
from datamodules.transforms.npy import decode_npy

FRAME_EXTS = ("png", "jpg")


class FlowDataModule(StreamingDataModule):
    """Frame pairs with their optical flow, cropped and flipped together.

    Args (plus StreamingDataModule's):
        crop_size: (H, W) of the crops (an int: square), the model's input size: random crops in training,
            centred crops in eval and predict. Frames smaller than it are corrupt samples.
        hflip: probability of a horizontal flip in training (the flow's u is negated with the frames).
        vflip: probability of a vertical flip in training (v is negated).
        num_classes: the flow's channels (u, v): 2, the size of the model output's last dimension that the CLI's
            shape check compares; there are no classes.

    Facts (docs/architecture.md): `input_shape = (2, H, W, 3)` (the crop), linked by the CLI into the flow model's
    adapter (`model.init_args.net.init_args.adapter.init_args.input_shape`), as every module's input shape.
    A pair whose frames differ in size, whose flow or mask does not match its frames, or whose flow holds NaN/inf
    is a corrupt sample: skipped, counted and named with its shard and key. Pairs without `flow.npy` are read only
    by `predict` (target 0, valid all False); elsewhere they are corrupt.
    """

    input_exts = tuple(f"frame1.{e}" for e in FRAME_EXTS)
    label_exts = ("flow.npy",)

    def __init__(
        self,
        crop_size: int | tuple[int, int] = (64, 64),
        hflip: float = 0.5,
        vflip: float = 0.1,
        num_classes: int = 2,
        **kwargs: Any,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        if self.permute_seed is not None:
            raise ValueError("FlowDataModule: permute_seed is not supported (the flow is defined on the pixel grid)")
        if self.predict_files is not None:  # a sample is two files: pairs come from a list, as shards
            raise ValueError(
                "FlowDataModule: predict_files is not supported (a sample is a pair of frames): write "
                "the pairs as shards with `perceiver-lit-shards flow list pairs.txt --out DIR --prefix "
                "test` and set data.init_args.predict_urls"
            )
        size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(int(s) for s in crop_size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"crop_size must be an int or (H, W), got {crop_size!r}")
        for name, p in (("hflip", hflip), ("vflip", vflip)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {p}")
        self.crop_size, self.hflip, self.vflip = size, float(hflip), float(vflip)
        self.input_shape = (2, *size, 3)
        self._pending: tuple[Any, torch.Tensor | None, torch.Tensor] | None = None  # (sample, flow, valid)

    # ---- one sample: frames, flow and mask are decoded, cropped and flipped together in decode_inputs; the base
    # then asks decode_target and extra_fields for the flow and mask of the same sample (kept in `_pending`)
    def _decode(self, sample: dict[str, Any], train: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        ext = self.find_ext(sample)
        ext2 = "frame2" + ext[len("frame1") :]
        if ext2 not in sample:
            found = sorted(k for k in sample if not k.startswith("__"))
            raise KeyError(f"no {ext2} beside {ext}; sample has {found}")
        frame1, frame2 = F.decode_rgb(sample[ext], ext), F.decode_rgb(sample[ext2], ext2)
        flow = None
        if "flow.npy" in sample:
            flow = decode_npy(sample["flow.npy"])
            if flow.dtype.kind != "f":
                raise ValueError(f"flow.npy must hold floats, got {flow.dtype}")
            flow = flow.astype(np.float32, copy=False)
        elif train:
            raise KeyError(f"no flow: expected {list(self.label_exts)}")
        valid = None
        if "valid.png" in sample:
            valid = F.decode_rgb(sample["valid.png"], "valid.png")[..., 0] > 0
        F.check_pair(frame1, frame2, flow, valid)
        h, w = frame1.shape[:2]
        y, x = F.crop_box(h, w, self.crop_size, train, self.rng)
        ch, cw = self.crop_size
        frames = np.stack([frame1[y : y + ch, x : x + cw], frame2[y : y + ch, x : x + cw]])  # uint8 (2, ch, cw, 3)
        if flow is None:
            return torch.from_numpy(frames), None, torch.zeros(self.crop_size, dtype=torch.bool)
        flow = flow[y : y + ch, x : x + cw]
        valid = np.ones(self.crop_size, bool) if valid is None else valid[y : y + ch, x : x + cw]
        if train and (self.hflip or self.vflip):
            frames, flow, valid = F.flip_pair(
                frames, flow, valid, self.rng.random() < self.hflip, self.rng.random() < self.vflip
            )
        return (
            torch.from_numpy(np.ascontiguousarray(frames)),
            torch.from_numpy(np.ascontiguousarray(flow)),
            torch.from_numpy(np.ascontiguousarray(valid)),
        )

    def _of(self, sample: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor]:
        if self._pending is None or self._pending[0] is not sample:  # not from decode_inputs: decode as eval
            _, flow, valid = self._decode(sample, train=False)
            return flow, valid
        return self._pending[1], self._pending[2]

    def decode_inputs(self, sample: dict[str, Any], train: bool) -> torch.Tensor:
        frames, flow, valid = self._decode(sample, train)
        self._pending = (sample, flow, valid)
        return frames  # uint8 (2, H, W, 3); scaled to [-1, 1] in collate

    def decode_target(self, sample: dict[str, Any]) -> torch.Tensor:
        flow = self._of(sample)[0]
        if flow is None:
            raise KeyError(f"no flow: expected {list(self.label_exts)}")
        return flow  # float32 (H, W, 2)

    def missing_target(self) -> torch.Tensor:
        """predict on a pair without flow: zeros, with `valid` all False."""
        return torch.zeros((*self.crop_size, 2), dtype=torch.float32)

    def extra_fields(self, sample: dict[str, Any], inputs: Any) -> dict[str, Any]:
        valid = self._of(sample)[1]
        self._pending = None
        return {"valid": valid}  # bool (H, W)

    def _check_label_range(self, split: str, raw: dict[str, Any]) -> None:
        """No class labels to range-check (the base would decode every eval pair at setup for it)."""

    def collate_inputs(self, frames: list[torch.Tensor]) -> torch.Tensor:
        """B pairs uint8 (2, H, W, 3) -> float32 (B, 2, H, W, 3) in [-1, 1], written straight into the batch."""
        out = batch_buffer((len(frames), *frames[0].shape), torch.float32)
        for pair, row in zip(frames, out):
            row.copy_(pair).mul_(2.0 / 255.0).sub_(1.0)
        return out

    def permute_inputs(self, inputs: Any) -> Any:
        raise ValueError("FlowDataModule: permute_seed is not supported")
