"""The papers' models by name. Each preset function returns a built model; the *_ARGS dicts hold the
paper's keyword arguments for the model (timm style; what they leave out keeps the model's default, declared once
in its signature; the adapter is built from the input shape), and `**overrides` go on top of them.

| preset | params | paper |
|---|---|---|
| perceiver_imagenet | 44,914,302 | Perceiver, 8 cross-attends (2..8 shared) x 6 shared self-attends, 44.9M |
| perceiver_io_imagenet | 48,440,627 | Perceiver IO, = HF deepmind/vision-perceiver-fourier |
| perceiver_audioset | (input dependent) | 2 cross-attends x 8 self-attends, no sharing |
| perceiver_modelnet40 | 44,774,250 | 2 cross-attends x 6 self-attends, 64 bands, max frequency 1120 |
| perceiver_io_language | 201,108,230 | HF deepmind/language-perceiver shapes (masked byte modelling) |
| perceiver_io_optical_flow | 41,057,134 | = HF PerceiverForOpticalFlow (deepmind/optical-flow-perceiver) |
| perceiver_io_multimodal_autoencoding | 19,858,855 | = HF PerceiverForMultimodalAutoencoding (multimodal-perceiver) |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .adapters import AudioAdapter, ImageAdapter, MultimodalAdapter, PointCloudAdapter, TextAdapter, VideoAdapter
from .perceiver import Perceiver
from .perceiver_io import PerceiverIO
from .queries import TrainableQueries

PERCEIVER_IMAGENET_ARGS: dict = {}  # Perceiver's defaults are the paper's ImageNet model
PERCEIVER_IO_IMAGENET_ARGS: dict = {}  # PerceiverIO's defaults are the paper's ImageNet model
PERCEIVER_AUDIOSET_ARGS = dict(
    num_classes=527,
    num_cross_attends=2,
    num_self_attends_per_block=8,
    share_cross_attends=False,
    share_latent_blocks=False,
)
PERCEIVER_MODELNET40_ARGS = dict(num_classes=40, num_cross_attends=2, num_self_attends_per_block=6)
# HF's masked-LM decoder (PerceiverForMaskedLM): 8 heads, q/k 256, v = the bytes' width (768), no query residual,
# logits against the tied byte embedding.
_MASKED_LM_DECODER = dict(
    decoder_num_heads=8,
    decoder_qk_channels=256,
    decoder_v_channels=768,
    decoder_query_residual=False,
    output_head="tied_embedding",
)
PERCEIVER_IO_LANGUAGE_ARGS = dict(
    num_classes=262,
    num_latents=256,
    latent_dim=1280,
    num_blocks=1,
    num_self_attends_per_block=26,
    num_cross_attention_heads=8,
    cross_attention_qk_channels=256,
    cross_attention_v_channels=1280,
    self_attention_qk_channels=256,
    self_attention_v_channels=1280,
    **_MASKED_LM_DECODER,
)


def perceiver_imagenet(input_shape: Sequence[int] = (224, 224, 3), **overrides) -> Perceiver:
    """Perceiver, ImageNet: 64 Fourier bands at max resolution 224 (261 input channels), 44.9M params."""
    adapter = ImageAdapter(input_shape, num_frequency_bands=64, max_resolution=(224, 224))
    return Perceiver(adapter, **{**PERCEIVER_IMAGENET_ARGS, **overrides})


def perceiver_io_imagenet(input_shape: Sequence[int] = (224, 224, 3), **overrides) -> PerceiverIO:
    """Perceiver IO, ImageNet (Fourier positions): exactly HF's vision-perceiver-fourier (48,440,627 params)."""
    adapter = ImageAdapter(input_shape, num_frequency_bands=64, max_resolution=(224, 224))
    return PerceiverIO(adapter, **{**PERCEIVER_IO_IMAGENET_ARGS, **overrides})


def perceiver_audioset(
    input_shape: Mapping[str, Sequence[int]] | Sequence[int] = None,
    video_patch=(2, 8, 8),
    samples_per_patch: int = 128,
    video_dropout: float = 0.3,
    **overrides,
) -> Perceiver:
    """Perceiver, AudioSet (527 labels). input_shape: {"video": (T, H, W, C), "audio": (S,) or (F, M)} for
    audio+video (paper: 32 x 224 x 224 x 3 and 61,440 samples), or one shape: 4-D video, 1-/2-D audio."""
    input_shape = input_shape or {"video": (32, 224, 224, 3), "audio": (61440,)}
    if isinstance(input_shape, Mapping):
        adapter = MultimodalAdapter(
            input_shape,
            {"video": {"patch_size": video_patch}, "audio": {"samples_per_patch": samples_per_patch}},
            min_padding_size=4,
            modality_dropout={"video": video_dropout},
        )
    elif len(input_shape) == 4:
        adapter = VideoAdapter(input_shape, patch_size=video_patch)
    else:
        adapter = AudioAdapter(input_shape, samples_per_patch=samples_per_patch)
    return Perceiver(adapter, **{**PERCEIVER_AUDIOSET_ARGS, **overrides})


def perceiver_modelnet40(input_shape: Sequence[int] = (2048, 3), **overrides) -> Perceiver:
    """Perceiver, ModelNet40 point clouds: Fourier features of xyz, 64 bands, max frequency 1120."""
    adapter = PointCloudAdapter(input_shape, num_frequency_bands=64, max_frequency=1120.0)
    return Perceiver(adapter, **{**PERCEIVER_MODELNET40_ARGS, **overrides})


def perceiver_io_language(input_shape: Sequence[int] = (2048,), **overrides) -> PerceiverIO:
    """Perceiver IO masked byte model with HF's deepmind/language-perceiver shapes (d_model 768,
    256 x 1280 latents, 26 self-attends, 2048 positions); logits (B, L, 262)."""
    adapter = TextAdapter(input_shape, vocab_size=262, num_channels=768, max_seq_len=2048)
    queries = TrainableQueries(2048, 768, match_input_length=True)
    return PerceiverIO(adapter, queries=queries, **{**PERCEIVER_IO_LANGUAGE_ARGS, **overrides})


PRESETS = {
    f.__name__: f
    for f in (
        perceiver_imagenet,
        perceiver_io_imagenet,
        perceiver_audioset,
        perceiver_modelnet40,
        perceiver_io_language,
    )
}


# Dense outputs (issue 17): optical flow and multimodal autoencoding, HF's / DeepMind's official shapes.
from .flow import FlowPatchAdapter, PerceiverIOFlow  # noqa: E402

PERCEIVER_IO_OPTICAL_FLOW_ARGS: dict = {}  # PerceiverIOFlow's defaults are HF's / DeepMind's model


def perceiver_io_optical_flow(
    input_shape: Sequence[int] = (2, 368, 496, 3), train_size: Sequence[int] = (368, 496), **overrides
) -> PerceiverIOFlow:
    """Perceiver IO optical flow: exactly HF's PerceiverForOpticalFlow (41,057,134 params). input_shape (2, H, W, 3);
    train_size sets the Fourier features' top frequency (the official model was trained at 368 x 496)."""
    adapter = FlowPatchAdapter(
        input_shape, patch_size=3, num_channels=64, num_frequency_bands=64, max_resolution=train_size
    )
    return PerceiverIOFlow(adapter, **{**PERCEIVER_IO_OPTICAL_FLOW_ARGS, **overrides})


PRESETS[perceiver_io_optical_flow.__name__] = perceiver_io_optical_flow

from .autoencoding import PerceiverIOMultimodalAutoencoder  # noqa: E402

PERCEIVER_IO_MULTIMODAL_AUTOENCODING_ARGS: dict = {}  # the model's defaults are HF's / DeepMind's model


def perceiver_io_multimodal_autoencoding(
    input_shape: Mapping[str, Sequence[int]] | None = None,
    video_patch: Sequence[int] = (1, 4, 4),
    samples_per_patch: int = 16,
    **overrides,
) -> PerceiverIOMultimodalAutoencoder:
    """Perceiver IO multimodal autoencoding (Kinetics-700): exactly HF's PerceiverForMultimodalAutoencoding
    (19,858,855 params). input_shape: {"video": (T, H, W, 3), "audio": (S,), "label": (K,)}; official: 16 frames
    of 224 x 224, 30,720 samples (16 x 1920), 700 classes. The Fourier features' top frequencies follow the clip."""
    input_shape = dict(input_shape or {"video": (16, 224, 224, 3), "audio": (30720,), "label": (700,)})
    video, audio = tuple(input_shape["video"]), tuple(input_shape["audio"])
    adapter = MultimodalAdapter(
        input_shape,
        {
            "video": {"patch_size": tuple(video_patch), "num_frequency_bands": 32, "max_resolution": video[:3]},
            "audio": {"samples_per_patch": samples_per_patch, "num_frequency_bands": 192, "max_resolution": audio},
            "label": {"class_path": "perceiver_lit.models.autoencoding.OneHotAdapter"},
        },
        min_padding_size=4,
    )
    return PerceiverIOMultimodalAutoencoder(adapter, **{**PERCEIVER_IO_MULTIMODAL_AUTOENCODING_ARGS, **overrides})


PRESETS[perceiver_io_multimodal_autoencoding.__name__] = perceiver_io_multimodal_autoencoding


def build_preset(name: str, **kwargs):
    """A preset by name, e.g. build_preset("perceiver_io_imagenet", num_classes=10)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)


__all__ = ["PRESETS", "build_preset", *PRESETS]
