"""UTF-8 text (`txt`) -> int64 (B, L) byte token ids + bool pad_mask (B, L), True at padding."""

from __future__ import annotations

from typing import Any

import torch

from datamodules.streaming import StreamingDataModule
from datamodules.transforms import text as T


class TextDataModule(StreamingDataModule):
    """Byte-level text, HF Perceiver token layout (vocab 262).

    Args (plus StreamingDataModule's):
        max_length: L, tokens per sample including the CLS/SEP frame (longer text is cropped: a random window in
            training, the start in eval).
        num_classes: classes of a `cls`/`json` label (text classification, e.g. language ID); None = masked
            byte modelling: no label is read, `num_classes` becomes the vocab (262) and target = the token ids
            (the task chooses and masks positions).
    """

    input_exts = ("txt", "text")

    def __init__(self, max_length: int = 2048, num_classes: int | None = None, **kwargs: Any):
        self.mlm = num_classes is None
        super().__init__(num_classes=T.VOCAB_SIZE if self.mlm else num_classes, **kwargs)
        self.needs_label = not self.mlm
        self.max_length = max_length
        self.input_shape = (max_length,)

    def decode_inputs(self, sample: dict[str, Any], train: bool) -> torch.Tensor:
        data = sample[self.find_ext(sample)]
        data.decode("utf-8")  # validate: invalid UTF-8 is a corrupt sample
        return T.encode_bytes(data, self.max_length, rng=self.rng if train else None)  # (L,)

    def iter_file_samples(self, path: str):
        """predict_files: every non-empty line of a text file is one sample, keyed `<path>:<line number>`."""
        ext = path.rpartition(".")[2].lower() if "." in path.rpartition("/")[2] else ""
        if ext not in self.input_exts:  # another modality: one sample that fails to decode (named, counted)
            yield from super().iter_file_samples(path)
            return
        with open(path, "rb") as f:
            for number, line in enumerate(f.read().splitlines(), 1):
                if line.strip():
                    yield {"__key__": f"{path}:{number}", "__url__": path, ext: line}

    def default_target(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.clone()  # MLM: the task masks positions and predicts the original ids

    def extra_fields(self, sample: dict[str, Any], inputs: torch.Tensor) -> dict[str, Any]:
        return {"pad_mask": inputs == T.PAD}  # (L,) True at padding
