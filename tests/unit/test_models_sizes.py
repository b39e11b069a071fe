"""Every size argument of every model, adapter, query provider and layer is checked at construction (issue 20.8):
0 or a negative value fails there with the class and argument named, not later inside torch."""

from __future__ import annotations

import pytest

from perceiver_lit.models import (
    AudioAdapter,
    ConvNet,
    ImageAdapter,
    Perceiver,
    PerceiverIO,
    PointCloudAdapter,
    TextAdapter,
    VideoAdapter,
)
from perceiver_lit.models.attention import CrossAttentionLayer, SelfAttentionBlock, SelfAttentionLayer
from perceiver_lit.models.checks import SizeError
from perceiver_lit.models.position import FourierPositionEncoding, LearnedPositionEncoding
from perceiver_lit.models.queries import FourierQueries, TrainableQueries


def _image() -> ImageAdapter:
    return ImageAdapter((8, 8, 1), num_frequency_bands=2)


CASES = [  # (factory taking the bad keyword, argument, bad value)
    *[
        (lambda **kw: Perceiver(_image(), **kw), name, bad)
        for name in (
            "num_classes",
            "num_latents",
            "latent_dim",
            "num_cross_attends",
            "num_blocks",
            "num_self_attends_per_block",
            "num_cross_attention_heads",
            "num_self_attention_heads",
            "cross_attention_qk_channels",
            "cross_attention_widening_factor",
            "self_attention_widening_factor",
        )
        for bad in (0, -3)
    ],
    *[
        (lambda **kw: PerceiverIO(_image(), **kw), name, 0)
        for name in (
            "num_classes",
            "num_latents",
            "latent_dim",
            "num_blocks",
            "num_self_attends_per_block",
            "decoder_num_heads",
            "cross_attention_v_channels",
            "self_attention_qk_channels",
            "decoder_qk_channels",
            "decoder_widening_factor",
        )
    ],
    (lambda **kw: ImageAdapter(**{"input_shape": (8, 8, 1), **kw}), "input_shape", (8, 0, 1)),
    (lambda **kw: ImageAdapter((8, 8, 1), prep="conv1x1", **kw), "prep_channels", 0),
    (lambda **kw: ImageAdapter((8, 8, 1), **kw), "num_frequency_bands", -1),
    (lambda **kw: ImageAdapter((8, 8, 1), position_encoding="learned", **kw), "num_position_channels", 0),
    (lambda **kw: VideoAdapter((4, 8, 8, 3), **kw), "patch_size", (1, 0, 2)),
    (lambda **kw: AudioAdapter((256,), **kw), "samples_per_patch", 0),
    (lambda **kw: PointCloudAdapter(**{"input_shape": (16, 3), **kw}), "input_shape", (0, 3)),
    (lambda **kw: TextAdapter((16,), **kw), "vocab_size", 0),
    (lambda **kw: TextAdapter((16,), **kw), "num_channels", -1),
    (lambda **kw: ConvNet((8, 8, 1), **kw), "channels", (8, 0)),
    (lambda **kw: TrainableQueries(**kw), "num_queries", 0),
    (lambda **kw: FourierQueries(**kw), "output_shape", (4, 0)),
    (lambda **kw: CrossAttentionLayer(8, 8, **kw), "num_heads", 0),
    (lambda **kw: SelfAttentionLayer(8, **kw), "widening_factor", 0),
    (lambda **kw: SelfAttentionBlock(dim=8, **kw), "num_layers", 0),
    (lambda **kw: FourierPositionEncoding(2, **kw), "num_bands", -2),
    (lambda **kw: LearnedPositionEncoding(4, **kw), "num_channels", 0),
]


@pytest.mark.parametrize("make, name, bad", CASES, ids=[f"{i}-{c[1]}={c[2]}" for i, c in enumerate(CASES)])
def test_size_below_the_minimum_fails_at_construction_naming_the_argument(make, name, bad):
    with pytest.raises(SizeError, match=rf"^\w+: (every entry of )?{name} must be an integer >= [01], got "):
        make(**{name: bad})


def test_zero_frequency_bands_are_allowed():
    """0 Fourier bands is a real setting (the raw positions alone), so the minimum there is 0."""
    assert ImageAdapter((8, 8, 1), num_frequency_bands=0).num_output_channels == 1 + 2
