"""What HF transformers' Perceiver calls our settings and weights, declared once for both directions.

`perceiver_lit.convert` reads HF -> ours and `perceiver_lit.hf_export` writes ours -> HF from these tables, so the
two cannot drift apart. `HF_CONFIGS` holds DeepMind's released models as HF config arguments (what the conversion
tests and benchmarks build HF models from, and, through `released`, the defaults of the models that reproduce them).
No torch or transformers import: plain names.
"""

from __future__ import annotations

from typing import Any

# (HF PerceiverConfig field, our config field): the encoder and latent settings every model family shares.
ENCODER_NAMES = (
    ("num_latents", "num_latents"),
    ("d_latents", "latent_dim"),
    ("num_self_attention_heads", "num_self_attention_heads"),
    ("num_cross_attention_heads", "num_cross_attention_heads"),
    ("self_attention_widening_factor", "self_attention_widening_factor"),
    ("cross_attention_widening_factor", "cross_attention_widening_factor"),
)
# PerceiverIO repeats a shared block num_blocks times; the dense models (flow, autoencoding) run one block.
IO_NAMES = (*ENCODER_NAMES, ("num_blocks", "num_blocks"), ("num_self_attends_per_block", "num_self_attends_per_block"))
DENSE_NAMES = (*ENCODER_NAMES, ("num_self_attends_per_block", "num_self_attends"))


def ours_from_hf(hf_config: Any, names: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Our keyword arguments {our name: value} from an HF PerceiverConfig.

    Args:
        hf_config: an HF PerceiverConfig (any object with the HF fields as attributes).
        names: (HF field, our field) pairs, e.g. IO_NAMES.
    """
    return {ours: getattr(hf_config, hf) for hf, ours in names}


def hf_from_ours(config: Any, names: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """HF PerceiverConfig keyword arguments {HF name: value} from our model config (the inverse of ours_from_hf).

    Args:
        config: our config dataclass (e.g. a PerceiverIO's `net.config`).
        names: (HF field, our field) pairs, e.g. IO_NAMES.
    """
    return {hf: getattr(config, ours) for hf, ours in names}


# ---- weights: (HF state-dict name, our state-dict name) pairs of the tensors that map one to one
WEIGHT_BIAS = ("weight", "bias")
BATCHNORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
QKV = ("query", "key", "value")  # HF's separate projections; ours are fused (layer_qkv_names)
TEXT_CLASSES = ("PerceiverForMaskedLM", "PerceiverForSequenceClassification")


def layer_names(hf: str, ours: str, self_attention: bool) -> list[tuple[str, str]]:
    """One HF PerceiverLayer `hf` and our CrossAttentionLayer / SelfAttentionLayer `ours`: their tensors that map
    one to one (all but q/k/v, which our layers fuse).

    Args:
        hf: the HF layer's prefix, e.g. "perceiver.encoder.cross_attention".
        ours: our layer's prefix, e.g. "encoder".
        self_attention: a self-attention layer (one LayerNorm before attention) or a cross-attention one (two).
    """
    norms = [("layernorm1", "norm")] if self_attention else [("layernorm1", "norm_q"), ("layernorm2", "norm_kv")]
    pairs = [(f"{hf}.attention.self.{h}", f"{ours}.{o}") for h, o in norms]
    pairs += [
        (f"{hf}.attention.output.dense", f"{ours}.proj"),
        (f"{hf}.layernorm", f"{ours}.norm_mlp"),
        (f"{hf}.mlp.dense1", f"{ours}.mlp.0"),
        (f"{hf}.mlp.dense2", f"{ours}.mlp.2"),
    ]
    return [(f"{h}.{p}", f"{o}.{p}") for p in WEIGHT_BIAS for h, o in pairs]


def decoder_prefix(arch: str) -> str:
    """Where an HF Perceiver IO classifier / masked LM keeps its decoder (PerceiverBasicDecoder)."""
    return "perceiver.decoder" if arch == "PerceiverForMaskedLM" else "perceiver.decoder.decoder"


def io_layers(arch: str, num_self_attends: int) -> list[tuple[str, str, bool]]:
    """(HF prefix, our prefix, self_attention) of every attention layer of an HF image classifier, masked LM or
    sequence classifier and our PerceiverIO: encoder, the shared block's self-attends, decoder.

    Args:
        arch: the HF class name.
        num_self_attends: self-attention layers in the (shared) block.
    """
    return [
        ("perceiver.encoder.cross_attention", "encoder", False),
        *[(f"perceiver.encoder.self_attends.{i}", f"processor.0.{i}", True) for i in range(num_self_attends)],
        (f"{decoder_prefix(arch)}.decoding_cross_attention", "decoder", False),
    ]


def io_names(arch: str) -> list[tuple[str, str]]:
    """The tensors outside the attention layers that map one to one between HF's `arch` and our PerceiverIO (a
    learned position table aside: HF projects it every forward, ours has the projection folded in).

    Args:
        arch: the HF class name (one of the three image classifiers or TEXT_CLASSES).
    """
    pre, dec = "perceiver.input_preprocessor", decoder_prefix(arch)
    pairs = [
        ("perceiver.embeddings.latents", "latents"),
        (f"{dec}.output_position_encodings.position_embeddings", "queries.queries"),
    ]
    if arch in TEXT_CLASSES:
        pairs += [(f"{pre}.embeddings.weight", "adapter.embedding.weight")]
        pairs += [(f"{pre}.position_embeddings.weight", "adapter.pos.embeddings")]
    if arch == "PerceiverForMaskedLM":
        pairs += [("embedding_decoder.bias", "head_bias")]  # the logits are against the tied byte embedding
    else:
        pairs += [(f"{dec}.final_layer.{p}", f"head.{p}") for p in WEIGHT_BIAS]
    if arch.endswith("Learned"):  # conv1x1 prep
        pairs += [(f"{pre}.convnet_1x1.{p}", f"adapter.prep.{p}") for p in WEIGHT_BIAS]
    elif arch.endswith("ConvProcessing"):  # conv + BatchNorm prep
        pairs += [(f"{pre}.convnet.conv.weight", "adapter.prep.0.weight")]
        pairs += [(f"{pre}.convnet.batchnorm.{k}", f"adapter.prep.1.{k}") for k in BATCHNORM]
    return pairs


# ---- the dense-output models: HF's PerceiverForOpticalFlow / PerceiverForMultimodalAutoencoding and our
# PerceiverIOFlow / PerceiverIOMultimodalAutoencoder (one cross-attend, one unshared block, a dense decoder)
FLOW_CLASS, MULTIMODAL_CLASS = "PerceiverForOpticalFlow", "PerceiverForMultimodalAutoencoding"
DENSE_CLASSES = (FLOW_CLASS, MULTIMODAL_CLASS)
HF_MODALITIES = {"audio": "audio", "label": "label", "video": "image"}  # our modality: HF's (HF's video is "image")


def dense_layers(num_self_attends: int) -> list[tuple[str, str, bool]]:
    """(HF prefix, our prefix, self_attention) of every attention layer of an HF dense model (num_blocks 1) and
    ours: encoder, self-attends, the decoder's cross-attend.

    Args:
        num_self_attends: self-attention layers (HF's num_self_attends_per_block).
    """
    return [
        ("perceiver.encoder.cross_attention", "encoder", False),
        *[(f"perceiver.encoder.self_attends.{i}", f"processor.{i}", True) for i in range(num_self_attends)],
        ("perceiver.decoder.decoder.decoding_cross_attention", "decoder.cross", False),
    ]


def dense_names(arch: str) -> list[tuple[str, str]]:
    """The tensors outside the attention layers that map one to one between HF's dense `arch` and ours.

    Args:
        arch: FLOW_CLASS or MULTIMODAL_CLASS.
    """
    pairs = [("perceiver.embeddings.latents", "latents")]
    pairs += [(f"perceiver.decoder.decoder.final_layer.{p}", f"decoder.head.{p}") for p in WEIGHT_BIAS]
    if arch == FLOW_CLASS:  # the Linear after patching
        pairs += [
            (f"perceiver.input_preprocessor.conv_after_patches.{p}", f"adapter.patch_proj.{p}") for p in WEIGHT_BIAS
        ]
        return pairs
    label_query = "perceiver.decoder.modalities.label.decoder.output_position_encodings.position_embeddings"
    pairs += [(label_query, "label_query")]
    for ours, hf in HF_MODALITIES.items():  # the modality postprocessors
        pairs += [
            (f"perceiver.output_postprocessor.modalities.{hf}.classifier.{p}", f"heads.{ours}.{p}") for p in WEIGHT_BIAS
        ]
    return pairs


def dense_rows(arch: str) -> list[tuple[str, str]]:
    """HF's (1, C) parameters that are (C,) vectors in ours: the multimodal model's learned modality paddings (of
    the inputs and of the queries) and mask tokens; none in the flow model.

    Args:
        arch: FLOW_CLASS or MULTIMODAL_CLASS.
    """
    if arch != MULTIMODAL_CLASS:
        return []
    pre = "perceiver.input_preprocessor"
    return [
        pair
        for ours, hf in HF_MODALITIES.items()
        for pair in (
            (f"{pre}.padding.{hf}", f"adapter.padding.{ours}"),
            (f"{pre}.mask.{hf}", f"mask_tokens.{ours}"),
            (f"perceiver.decoder.padding.{hf}", f"query_padding.{ours}"),
        )
    ]


# ---- DeepMind's released models as HF PerceiverConfig arguments (transformers' convert_perceiver_haiku_to_pytorch.py)
HF_MODELS = ("vision", "language", "optical_flow", "multimodal_autoencoding")
# HF field: its value in each of HF_MODELS, side by side
_LATENT_FIELDS = {
    "num_latents": (512, 256, 2048, 784),
    "d_latents": (1024, 1280, 512, 512),
    "num_blocks": (8, 1, 1, 1),
    "num_self_attends_per_block": (6, 26, 24, 8),
    "num_self_attention_heads": (8, 8, 16, 8),
    "num_cross_attention_heads": (1, 8, 1, 1),
}
# The inputs and outputs. d_model is the adapter's output width; the three vision families differ (261, 512, 322).
_OTHER_FIELDS = {
    "vision": dict(num_labels=1000, image_size=224),
    "language": dict(d_model=768, qk_channels=256, v_channels=1280, max_position_embeddings=2048, vocab_size=262),
    "optical_flow": dict(d_model=322),
    "multimodal_autoencoding": dict(
        d_model=704, num_labels=700, samples_per_patch=16, audio_samples_per_frame=1920, output_num_channels=512
    ),
}
HF_CONFIGS = {
    model: {**{field: values[i] for field, values in _LATENT_FIELDS.items()}, **_OTHER_FIELDS[model]}
    for i, model in enumerate(HF_MODELS)
}


def released(model: str, names: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """DeepMind's released `model` in our names: {our field: value} for each pair of `names` whose HF field
    HF_CONFIGS[model] sets. PerceiverIO's and the dense models' signatures take their architecture defaults from it,
    so each released model's settings are written once.

    Args:
        model: one of HF_MODELS, e.g. "optical_flow".
        names: (HF field, our field) pairs, e.g. DENSE_NAMES.
    """
    config = HF_CONFIGS[model]
    return {ours: config[hf] for hf, ours in names if hf in config}
