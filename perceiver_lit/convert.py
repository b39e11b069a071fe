"""Convert HF transformers Perceiver models to perceiver-lit models with the same weights.

Supported: PerceiverForImageClassificationFourier, ...Learned, ...ConvProcessing (DeepMind's three ImageNet
models), PerceiverForMaskedLM (language-perceiver) and PerceiverForSequenceClassification (language-perceiver with
a classification head, as for GLUE). Our image models take channels-last images
(B, H, W, C); HF's take (B, C, H, W). Compare in eval mode: HF's attention_probs_dropout_prob defaults to 0.1.
It is not carried over: the converted model has dropout 0, as DeepMind trained.

The names HF and we give the same settings and tensors are declared once, in `perceiver_lit.models.hf_names`, which
`hf_export` (the inverse direction) reads too.

    perceiver-lit-convert --hf /path/to/vision-perceiver-fourier --out fourier.pt
    model = load_converted("fourier.pt")
    model = perceiver_lit.models.pretrained("fourier.pt")   # the same, with num_classes / input_shape retargeting

The file holds {"format", "spec", "state_dict"}: `spec` names the model, adapter and query classes with their
keyword arguments, so `build_from_spec` rebuilds the model without transformers installed.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from perceiver_lit import models
from perceiver_lit.models.hf_names import (
    DENSE_NAMES,
    FLOW_CLASS,
    HF_MODALITIES,
    IO_NAMES,
    MULTIMODAL_CLASS,
    QKV,
    TEXT_CLASSES,
    WEIGHT_BIAS,
    dense_layers,
    dense_names,
    dense_rows,
    io_layers,
    io_names,
    layer_names,
    ours_from_hf,
)
from perceiver_lit.models.pretrained import CONVERTED_FORMAT

FORMAT = CONVERTED_FORMAT
IMAGE_CLASSES = (
    "PerceiverForImageClassificationFourier",
    "PerceiverForImageClassificationLearned",
    "PerceiverForImageClassificationConvProcessing",
)
SUPPORTED = (*IMAGE_CLASSES, *TEXT_CLASSES)


def _build_with_weights(spec: dict[str, Any], state_dict: dict[str, Tensor]) -> nn.Module:
    """Build on the meta device (no random init of 10^8 weights), then take the given tensors as parameters."""
    with torch.device("meta"):
        model = build_from_spec(spec)
    model.load_state_dict(state_dict, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"converted model: tensors without weights after loading: {left}")
    return model


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """A model from {"model": class name, "config": kwargs, "adapter": {...}, "queries": {...} | None}."""
    adapter = getattr(models, spec["adapter"]["class"])(**spec["adapter"]["kwargs"])
    queries = None
    if spec.get("queries"):
        queries = getattr(models, spec["queries"]["class"])(**spec["queries"]["kwargs"])
    cls = getattr(models, spec["model"])
    kwargs = dict(spec["config"])
    if queries is not None:
        kwargs["queries"] = queries
    return cls(adapter=adapter, **kwargs)


def _hf_spec(hf_model: nn.Module, image_size: int | None) -> dict[str, Any]:
    name, cfg = type(hf_model).__name__, hf_model.config
    if name not in SUPPORTED:
        raise ValueError(f"from_huggingface: {name} is not supported; supported: {', '.join(SUPPORTED)}")
    if cfg.hidden_act != "gelu":
        raise ValueError(f"from_huggingface: hidden_act {cfg.hidden_act!r}; only exact 'gelu' is mapped")
    if not cfg.use_query_residual:
        raise ValueError("from_huggingface: use_query_residual=False in the encoder is not mapped")
    pre = hf_model.perceiver.input_preprocessor
    kv_dim = pre.num_channels
    cross_qk = cfg.qk_channels or (kv_dim if cfg.cross_attention_shape_for_attention == "kv" else cfg.d_latents)
    config = models.PerceiverIOConfig(
        num_classes=cfg.vocab_size if name == "PerceiverForMaskedLM" else cfg.num_labels,
        **ours_from_hf(cfg, IO_NAMES),
        cross_attention_qk_channels=cross_qk,
        cross_attention_v_channels=cfg.v_channels,
        self_attention_qk_channels=cfg.qk_channels,
        self_attention_v_channels=cfg.v_channels,
    )
    queries = {"class": "TrainableQueries", "kwargs": dict(num_queries=1, num_channels=cfg.d_latents)}
    if name in TEXT_CLASSES:
        n_pos = cfg.max_position_embeddings
        kw = dict(input_shape=(n_pos,), vocab_size=cfg.vocab_size, num_channels=cfg.d_model, max_seq_len=n_pos)
        if name == "PerceiverForMaskedLM":  # one query per byte, logits against the tied embedding
            att = hf_model.perceiver.decoder.decoding_cross_attention.attention.self
            config.decoder_num_heads, config.decoder_qk_channels = att.num_heads, att.qk_channels
            config.decoder_v_channels, config.decoder_query_residual = att.v_channels, False
            config.output_head = "tied_embedding"
            queries = {
                "class": "TrainableQueries",
                "kwargs": dict(num_queries=n_pos, num_channels=cfg.d_model, match_input_length=True),
            }
        adapter = {"class": "TextAdapter", "kwargs": kw}
    else:
        adapter = {"class": "ImageAdapter", "kwargs": _image_adapter_kwargs(pre, cfg, image_size)}
    return {"model": "PerceiverIO", "config": asdict(config), "adapter": adapter, "queries": queries}


def _image_adapter_kwargs(pre: nn.Module, cfg: Any, image_size: int | None) -> dict[str, Any]:
    """Our ImageAdapter's arguments from HF's PerceiverImagePreprocessor `pre` (prep and position features)."""
    size = image_size or (cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0])
    kw: dict[str, Any] = dict(input_shape=(size, size, pre.in_channels))
    if pre.prep_type == "pixels":
        kw.update(prep="pixels")
    elif pre.prep_type == "conv1x1":
        kw.update(prep="conv1x1", prep_channels=pre.out_channels)
    else:
        kw.update(prep="conv", prep_channels=pre.out_channels)
    if pre.position_encoding_type == "fourier":
        pe = pre.position_embeddings
        if not pe.concat_pos or pe.sine_only:
            raise ValueError("from_huggingface: only concat_pos=True, sine_only=False Fourier features are mapped")
        kw.update(
            position_encoding="fourier", num_frequency_bands=pe.num_bands, max_resolution=tuple(pe.max_resolution)
        )
    else:
        if pre.concat_or_add_pos != "concat":
            raise ValueError("from_huggingface: only concatenated learned positions are mapped")
        kw.update(position_encoding="learned", num_position_channels=pre.project_pos_dim)
    return kw


def _layer(sd: dict[str, Tensor], hf: str, ours: str, self_attention: bool) -> dict[str, Tensor]:
    """One HF PerceiverLayer -> our CrossAttentionLayer / SelfAttentionLayer (fusing q/k/v weights)."""
    out = {o: sd[h] for h, o in layer_names(hf, ours, self_attention)}
    for p in WEIGHT_BIAS:
        q, k, v = (sd[f"{hf}.attention.self.{n}.{p}"] for n in QKV)
        if self_attention:
            out[f"{ours}.to_qkv.{p}"] = torch.cat([q, k, v])
        else:
            out[f"{ours}.to_q.{p}"] = q
            out[f"{ours}.to_kv.{p}"] = torch.cat([k, v])
    return out


def _state_dict(hf_model: nn.Module, num_self_attends: int) -> dict[str, Tensor]:
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    name = type(hf_model).__name__
    out = {ours: sd[hf] for hf, ours in io_names(name)}
    for hf, ours, self_attention in io_layers(name, num_self_attends):
        out |= _layer(sd, hf, ours, self_attention)
    if name.endswith("Learned"):
        # HF projects its learned table through a Linear every forward; fold it into the table once.
        prep = hf_model.perceiver.input_preprocessor
        with torch.no_grad():
            out["adapter.pos.embeddings"] = (
                prep.positions_projection(prep.position_embeddings.position_embeddings).detach().clone()
            )
    return out


def from_huggingface(hf_model: nn.Module, image_size: int | None = None, return_spec: bool = False):
    """Our PerceiverIO with the weights of an HF Perceiver model (see SUPPORTED).

    image_size: the images the model will see (sets the adapter's input_shape; default config.image_size).
    """
    dense = DENSE_CONVERTERS.get(type(hf_model).__name__)
    if dense is not None:  # optical flow, multimodal autoencoding: their own spec and weight mapping
        spec, state_dict = dense(hf_model, image_size)
        model = _build_with_weights(spec, state_dict)
        model.train(hf_model.training)
        return (model, spec) if return_spec else model
    spec = _hf_spec(hf_model, image_size)
    model = _build_with_weights(spec, _state_dict(hf_model, hf_model.config.num_self_attends_per_block))
    model.train(hf_model.training)
    return (model, spec) if return_spec else model


# ---- dense outputs (issue 17): PerceiverForOpticalFlow, PerceiverForMultimodalAutoencoding ----


def _check_dense_config(name: str, cfg) -> None:
    """What the dense converters map: exact GELU, the encoder's query residual, the "kv" attention shapes."""
    if cfg.hidden_act != "gelu":
        raise ValueError(f"from_huggingface: {name}: hidden_act {cfg.hidden_act!r}; only exact 'gelu' is mapped")
    if not cfg.use_query_residual:
        raise ValueError(f"from_huggingface: {name}: use_query_residual=False in the encoder is not mapped")
    if cfg.cross_attention_shape_for_attention != "kv" or cfg.qk_channels or cfg.v_channels:
        raise ValueError(
            f"from_huggingface: {name}: only cross_attention_shape_for_attention='kv' with "
            "qk_channels=v_channels=None is mapped (the official configs)"
        )


def _dense_state_dict(hf_model: nn.Module) -> dict[str, Tensor]:
    """An HF dense model's weights under our names (hf_names' dense tables; q/k/v fused). HF's block is applied
    num_blocks times with shared weights; the official dense models have num_blocks = 1, which ours map."""
    cfg, name = hf_model.config, type(hf_model).__name__
    if cfg.num_blocks != 1:
        raise ValueError(f"from_huggingface: num_blocks={cfg.num_blocks}; the dense models map num_blocks=1")
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    out = {ours: sd[hf] for hf, ours in dense_names(name)}
    out |= {ours: sd[hf].reshape(-1) for hf, ours in dense_rows(name)}
    for hf, ours, self_attention in dense_layers(cfg.num_self_attends_per_block):
        out |= _layer(sd, hf, ours, self_attention)
    return out


def _flow(hf_model: nn.Module, image_size: int | tuple[int, int] | None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """PerceiverForOpticalFlow -> our PerceiverIOFlow: spec and weights. image_size: (H, W) of the frames the
    model will see (default config.train_size, which also stays the Fourier features' max resolution)."""
    cfg = hf_model.config
    _check_dense_config("PerceiverForOpticalFlow", cfg)
    pre = hf_model.perceiver.input_preprocessor
    train_size = tuple(int(s) for s in cfg.train_size)
    size = (
        train_size
        if image_size is None
        else ((image_size, image_size) if isinstance(image_size, int) else tuple(image_size))
    )
    pe = pre.position_embeddings
    adapter = {
        "class": "FlowPatchAdapter",
        "kwargs": dict(
            input_shape=(2, *size, 3),
            patch_size=3,
            num_channels=pre.out_channels,
            num_frequency_bands=pe.num_bands,
            max_resolution=tuple(pe.max_resolution),
        ),
    }
    dec = hf_model.perceiver.decoder
    config = models.PerceiverIOFlowConfig(
        **ours_from_hf(cfg, DENSE_NAMES),
        decoder_num_heads=dec.decoder.decoding_cross_attention.attention.self.num_heads,
        output_channels=dec.output_num_channels,
        rescale_factor=float(dec.rescale_factor),
    )
    spec = {"model": "PerceiverIOFlow", "config": asdict(config), "adapter": adapter, "queries": None}
    return spec, _dense_state_dict(hf_model)


def _multimodal_autoencoding(hf_model: nn.Module, image_size: int | None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """PerceiverForMultimodalAutoencoding -> our PerceiverIOMultimodalAutoencoder: spec and weights. HF's "image"
    modality is our "video" (channels-last frames). image_size is not used: the clip shape is the config's."""
    cfg = hf_model.config
    name = "PerceiverForMultimodalAutoencoding"
    _check_dense_config(name, cfg)
    pre, dec = hf_model.perceiver.input_preprocessor, hf_model.perceiver.decoder
    img, aud = pre.modalities["image"], pre.modalities["audio"]
    video_shape = (cfg.num_frames, cfg.image_size, cfg.image_size)
    if tuple(cfg.output_shape[1:4]) != video_shape:
        raise ValueError(
            f"from_huggingface: {name}: output_shape {cfg.output_shape} is not the input clip "
            f"(1, *{video_shape}); only autoencoding of the input's shape is mapped"
        )
    n_samples = cfg.num_frames * cfg.audio_samples_per_frame
    img_q = dec.modalities["image"].decoder.output_position_encodings
    aud_q = dec.modalities["audio"].output_position_encodings
    if tuple(img_q.max_resolution) != tuple(img.position_embeddings.max_resolution) or tuple(
        aud_q.max_resolution
    ) != tuple(aud.position_embeddings.max_resolution):
        raise ValueError(f"from_huggingface: {name}: query and input Fourier max resolutions differ; not mapped")
    input_shape = {"audio": [n_samples], "label": [cfg.num_labels], "video": [*video_shape, img.in_channels]}
    adapters = {
        "video": {
            "patch_size": [img.temporal_downsample, img.spatial_downsample, img.spatial_downsample],
            "num_frequency_bands": img.position_embeddings.num_bands,
            "max_resolution": list(img.position_embeddings.max_resolution),
        },
        "audio": {
            "samples_per_patch": aud.samples_per_patch,
            "num_frequency_bands": aud.position_embeddings.num_bands,
            "max_resolution": list(aud.position_embeddings.max_resolution),
        },
        "label": {"class_path": "perceiver_lit.models.autoencoding.OneHotAdapter"},
    }
    adapter = {
        "class": "MultimodalAdapter",
        "kwargs": dict(input_shape=input_shape, adapters=adapters, min_padding_size=pre.min_padding_size),
    }
    ours = {hf: n for n, hf in HF_MODALITIES.items()}
    config = models.MultimodalAutoencoderConfig(
        **ours_from_hf(cfg, DENSE_NAMES),
        decoder_num_heads=dec.decoder.decoding_cross_attention.attention.self.num_heads,
        decoder_output_channels=cfg.output_num_channels,
        video_query_bands=img_q.num_bands,
        audio_query_bands=aud_q.num_bands,
        label_query_channels=dec.modalities["label"].num_query_channels,
        query_padding_size=dec.min_padding_size,
        mask_probs={ours[k]: float(v) for k, v in pre.mask_probs.items()},
    )
    spec = {"model": "PerceiverIOMultimodalAutoencoder", "config": asdict(config), "adapter": adapter, "queries": None}
    return spec, _dense_state_dict(hf_model)


# HF class name -> (hf_model, image_size) -> (spec, state_dict)
DENSE_CONVERTERS = {FLOW_CLASS: _flow, MULTIMODAL_CLASS: _multimodal_autoencoding}
SUPPORTED = (*SUPPORTED, *DENSE_CONVERTERS)


def save_converted(model: nn.Module, spec: dict[str, Any], path: str) -> None:
    from perceiver_lit.checkpoint_io import atomic_torch_save  # a temp file beside `path`, then os.replace

    atomic_torch_save({"format": FORMAT, "spec": spec, "state_dict": model.state_dict()}, path)


def load_converted(path: str, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by `perceiver-lit-convert` (or save_converted) and load its weights."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a perceiver-lit converted checkpoint (expected format {FORMAT!r})")
    return _build_with_weights(ckpt["spec"], ckpt["state_dict"]).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="perceiver-lit-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", required=True, help="local folder of an HF Perceiver model (config.json + weights)")
    parser.add_argument("--out", required=True, help="output checkpoint file (spec + state_dict)")
    parser.add_argument("--image-size", type=int, default=None, help="image side the model will see")
    args = parser.parse_args(argv)

    from datamodules.optional import one_line_missing, require

    with one_line_missing("perceiver-lit-convert"):  # one line naming the extra, not a traceback
        require("transformers", "perceiver-lit-convert (it reads Hugging Face models)")
    import transformers

    config = transformers.AutoConfig.from_pretrained(args.hf, local_files_only=True)
    arch = (config.architectures or [None])[0]
    if arch not in SUPPORTED:
        raise SystemExit(
            f"{args.hf}/config.json: architectures={config.architectures}; expected one of {', '.join(SUPPORTED)}"
        )
    hf_model = getattr(transformers, arch).from_pretrained(args.hf, local_files_only=True).eval()
    model, spec = from_huggingface(hf_model, args.image_size, return_spec=True)
    save_converted(model, spec, args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {arch} ({n:,} parameters) -> {args.out}")


if __name__ == "__main__":
    main()
