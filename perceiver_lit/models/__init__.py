"""Perceiver and Perceiver IO in pure PyTorch (no Lightning): adapters, blocks, models, query providers, presets."""

from .adapters import (
    AudioAdapter,
    ImageAdapter,
    InputAdapter,
    MultimodalAdapter,
    PointCloudAdapter,
    TextAdapter,
    VideoAdapter,
)
from .attention import CrossAttentionLayer, SelfAttentionBlock, SelfAttentionLayer
from .autoencoding import GridQueries, MultimodalAutoencoderConfig, OneHotAdapter, PerceiverIOMultimodalAutoencoder
from .convnet import ConvNet, ConvNetConfig
from .decoders import DenseDecoder, random_query_indices
from .flow import FlowPatchAdapter, PerceiverIOFlow, PerceiverIOFlowConfig, extract_patches
from .perceiver import Perceiver, PerceiverConfig
from .perceiver_io import PerceiverIO, PerceiverIOConfig
from .position import FourierPositionEncoding, LearnedPositionEncoding, fourier_features
from .presets import (
    PRESETS,
    build_preset,
    perceiver_audioset,
    perceiver_imagenet,
    perceiver_io_imagenet,
    perceiver_io_language,
    perceiver_modelnet40,
)
from .pretrained import pretrained  # noqa: E402 - the net factory (shadows its module's name, as intended)
from .queries import FourierQueries, MultimodalQueries, QueryProvider, TrainableQueries

__all__ = [
    "InputAdapter",
    "ImageAdapter",
    "VideoAdapter",
    "AudioAdapter",
    "PointCloudAdapter",
    "TextAdapter",
    "MultimodalAdapter",
    "CrossAttentionLayer",
    "SelfAttentionLayer",
    "SelfAttentionBlock",
    "Perceiver",
    "PerceiverConfig",
    "PerceiverIO",
    "PerceiverIOConfig",
    "ConvNet",
    "ConvNetConfig",
    "FourierPositionEncoding",
    "LearnedPositionEncoding",
    "fourier_features",
    "QueryProvider",
    "TrainableQueries",
    "FourierQueries",
    "MultimodalQueries",
    "PRESETS",
    "build_preset",
    "perceiver_imagenet",
    "perceiver_io_imagenet",
    "perceiver_audioset",
    "perceiver_modelnet40",
    "perceiver_io_language",
    "pretrained",
    "DenseDecoder",
    "random_query_indices",
    "FlowPatchAdapter",
    "PerceiverIOFlow",
    "PerceiverIOFlowConfig",
    "extract_patches",
    "OneHotAdapter",
    "GridQueries",
    "PerceiverIOMultimodalAutoencoder",
    "MultimodalAutoencoderConfig",
]
