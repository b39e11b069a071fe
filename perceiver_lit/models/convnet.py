"""ConvNet: a small convolutional baseline for grid inputs, the control in the permuted-input study.

Convolutions assume that neighbouring array entries are neighbouring pixels. Scramble the pixels with one fixed
permutation and that prior is wrong, so a ConvNet loses accuracy, while a Perceiver (whose position features
follow each pixel) does not: the paper's permuted-ImageNet table (ResNet-50 73.5 -> 39.4; Perceiver 78.0 -> 78.0).

    (B, H, W, C) channels-last, or (B, H, W) e.g. a mel grid
    -> [conv3x3 -> BatchNorm -> ReLU -> maxpool 2] x len(channels)
    -> global average pool -> Linear -> (B, num_classes)

Same conventions as the Perceiver models (docs/architecture.md): keyword configuration with `num_classes`,
`forward(inputs, pad_mask=None)`, `no_weight_decay()`, `flops_per_sample()`. It takes `input_shape` itself
(no adapter: it has no position features to permute).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .checks import check_sizes
from .hparams import config_class, record


class ConvNet(nn.Module):
    """The convolutional baseline (see the module docstring): forward(inputs, pad_mask=None) -> (B, num_classes).

    Args:
        input_shape: per-sample shape, (H, W, C) or (H, W) (the data module's `input_shape`).
        num_classes: output classes.
        channels: output channels of each conv stage; each stage halves H and W.
        dropout: before the classifier.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 128),
        dropout: float = 0.0,
    ):
        super().__init__()
        check_sizes("ConvNet", input_shape=tuple(input_shape), num_classes=num_classes, channels=tuple(channels))
        shape = tuple(int(s) for s in input_shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"ConvNet: input_shape must be (H, W, C) or (H, W), got {shape}")
        self.config = record(ConvNetConfig, {**locals(), "input_shape": shape, "channels": tuple(channels)})
        self.input_shape, self.num_classes = shape, num_classes
        c_in = shape[2] if len(shape) == 3 else 1
        layers: list[nn.Module] = []
        for c in channels:
            # bias=False: the BatchNorm that follows has its own shift.
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, num_classes))

    def forward(self, inputs: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        x = inputs if inputs.ndim == 4 else inputs.unsqueeze(-1)  # (B, H, W, C)
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        x = self.features(x)  # (B, C', H', W')
        return self.head(x.mean(dim=(2, 3)))  # (B, num_classes)

    def no_weight_decay(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.ndim < 2}

    def flops_per_sample(self) -> int:
        """Forward FLOPs (2 x multiply-adds) of the convolutions and the classifier for one sample."""
        h, w = self.input_shape[:2]
        macs = 0
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                macs += h * w * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.MaxPool2d):
                h, w = -(-h // 2), -(-w // 2)
        lin = self.head[-1]
        return 2 * (macs + lin.in_features * lin.out_features)


ConvNetConfig = config_class(ConvNet)
