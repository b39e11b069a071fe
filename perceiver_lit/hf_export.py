"""Export a perceiver-lit net to an HF transformers folder: `save_huggingface(net, out_dir)`.

    save_huggingface(perceiver_lit.models.pretrained("runs/ft/checkpoints/best.ckpt"), "hf-out")
    transformers.PerceiverForImageClassificationConvProcessing.from_pretrained("hf-out")

The inverse of `perceiver_lit.convert`: the fused q/k/v projections are split back into HF's query/key/value, a
learned position table goes into HF's table with an identity position projection. Writes config.json and
model.safetensors (HF's `save_pretrained`). Every architecture HF has a class for is exported:

| our net | HF class |
|---|---|
| PerceiverIO, ImageAdapter pixels + Fourier (64 bands, max res. 224), 1 query | ...ImageClassificationFourier |
| PerceiverIO, ImageAdapter conv1x1 (256) + learned positions (256, square grid) | ...ImageClassificationLearned |
| PerceiverIO, ImageAdapter conv (64) + Fourier (64 bands, max res. 56) | ...ImageClassificationConvProcessing |
| PerceiverIO, TextAdapter, one query per byte, tied-embedding head | PerceiverForMaskedLM |
| PerceiverIO, TextAdapter, 1 query, linear head | PerceiverForSequenceClassification |

HF's Perceiver is Perceiver IO (one cross-attend, a decoder): an iterative `Perceiver` (cross-attends repeated,
mean-pooled head) has no HF class, and neither has any other variant (permuted positions, other Fourier
settings, unshared processor blocks); those are a one-line ValueError. Needs transformers (`pip install
'perceiver-lit[hf]'`). `perceiver-lit-export --format hf` (perceiver_lit/export.py) calls this function.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from perceiver_lit.hf_names import IO_NAMES, QKV, WEIGHT_BIAS, hf_from_ours, io_layers, io_names, layer_names
from perceiver_lit.models import (
    FourierPositionEncoding,
    ImageAdapter,
    LearnedPositionEncoding,
    PerceiverIO,
    TextAdapter,
)
from perceiver_lit.models.queries import TrainableQueries

EXPORTABLE = (
    "PerceiverForImageClassificationFourier",
    "PerceiverForImageClassificationLearned",
    "PerceiverForImageClassificationConvProcessing",
    "PerceiverForMaskedLM",
    "PerceiverForSequenceClassification",
)


class NotExportable(ValueError):
    """The net has no HF transformers class."""


def _refuse(net: nn.Module, why: str) -> NotExportable:
    return NotExportable(
        f"save_huggingface: {type(net).__name__} {why}; HF transformers has no class for it "
        f"(exportable: {', '.join(EXPORTABLE)}); use perceiver-lit-export --format onnx or "
        "exported-program instead"
    )


def _fourier_ok(adapter: ImageAdapter, max_resolution: tuple[int, int]) -> bool:
    pos = adapter.pos
    res = pos.max_resolution or adapter.grid
    return (
        isinstance(pos, FourierPositionEncoding)
        and pos.num_bands == 64
        and pos.concat_pos
        and not pos.sine_only
        and tuple(res) == max_resolution
        and adapter.pos_proj is None
    )


def hf_architecture(net: nn.Module) -> str:
    """The HF class that represents `net`, or NotExportable (one line) saying why there is none."""
    if not isinstance(net, PerceiverIO):
        if hasattr(net, "cross_attends"):
            n = getattr(getattr(net, "config", None), "num_cross_attends", len(net.cross_attends))
            raise _refuse(net, f"(an iterative Perceiver, {n} cross-attend{'s' if n != 1 else ''}, mean-pooled head)")
        raise _refuse(net, "is not a Perceiver IO")
    cfg, adapter, queries = net.config, net.adapter, net.queries
    if not cfg.share_blocks and cfg.num_blocks > 1:
        raise _refuse(net, "with unshared processor blocks (share_blocks=False)")
    if not isinstance(queries, TrainableQueries):
        raise _refuse(net, f"with {type(queries).__name__} output queries")
    if getattr(adapter.pos, "perm", None) is not None:
        raise _refuse(net, "with permuted positions (permute_seed)")
    if isinstance(adapter, TextAdapter):
        if queries.match_input_length and cfg.output_head == "tied_embedding" and not cfg.decoder_query_residual:
            return "PerceiverForMaskedLM"
        if queries.num_queries == 1 and cfg.output_head == "linear" and cfg.decoder_query_residual:
            return "PerceiverForSequenceClassification"
        raise _refuse(net, "with a text adapter and neither a masked-LM nor a one-query classification decoder")
    if not isinstance(adapter, ImageAdapter):
        raise _refuse(net, f"with a {type(adapter).__name__}")
    if queries.num_queries != 1 or cfg.output_head != "linear" or not cfg.decoder_query_residual:
        raise _refuse(net, "with an image adapter and not a one-query classification decoder")
    if adapter.in_channels != 3 or adapter.concat_or_add != "concat":
        raise _refuse(
            net, f"with {adapter.in_channels} input channels / '{adapter.concat_or_add}' positions (HF: 3, concat)"
        )
    if adapter.prep_type == "pixels" and _fourier_ok(adapter, (224, 224)):
        return "PerceiverForImageClassificationFourier"
    if adapter.prep_type == "conv" and adapter.prep[0].out_channels == 64 and _fourier_ok(adapter, (56, 56)):
        return "PerceiverForImageClassificationConvProcessing"
    if (
        adapter.prep_type == "conv1x1"
        and adapter.prep.out_channels == 256
        and isinstance(adapter.pos, LearnedPositionEncoding)
        and adapter.pos.num_channels == 256
        and adapter.grid[0] == adapter.grid[1]
    ):
        return "PerceiverForImageClassificationLearned"
    raise _refuse(
        net,
        f"with an image adapter (prep {adapter.prep_type!r}, {type(adapter.pos).__name__}) other than "
        "HF's three (pixels + 64 Fourier bands at 224; conv1x1 256 + learned 256; conv 64 + 64 Fourier "
        "bands at 56)",
    )


def _attention_channels(net: PerceiverIO) -> dict[str, Any]:
    """HF's qk_channels / v_channels / cross_attention_shape_for_attention that give our layers' widths (HF shares
    qk/v between the cross- and self-attention, and derives the defaults per layer)."""
    enc, layer = net.encoder, net.processor[0][0]
    d, kv = net.config.latent_dim, net.adapter.num_output_channels
    for qk in (None, layer.qk_channels):
        for v in (None, layer.v_channels):
            for shape in ("kv", "q"):
                qk_s, qk_c = qk or d, qk or (kv if shape == "kv" else d)
                if (qk_s, v or qk_s, qk_c, v or qk_c) == (
                    layer.qk_channels,
                    layer.v_channels,
                    enc.qk_channels,
                    enc.v_channels,
                ):
                    return {"qk_channels": qk, "v_channels": v, "cross_attention_shape_for_attention": shape}
    raise _refuse(
        net,
        f"with attention widths HF's one qk_channels / v_channels cannot express (encoder "
        f"{enc.qk_channels}/{enc.v_channels}, latents {layer.qk_channels}/{layer.v_channels})",
    )


def hf_config(net: PerceiverIO, arch: str) -> Any:
    import transformers

    cfg, adapter = net.config, net.adapter
    kw: dict[str, Any] = dict(
        **hf_from_ours(cfg, IO_NAMES),
        d_model=adapter.num_output_channels,
        hidden_act="gelu",
        attention_probs_dropout_prob=cfg.dropout,
        use_query_residual=True,
        architectures=[arch],
        **_attention_channels(net),
    )
    if isinstance(adapter, TextAdapter):
        kw.update(vocab_size=adapter.embedding.num_embeddings, max_position_embeddings=adapter.pos.embeddings.shape[0])
    else:
        kw.update(image_size=adapter.grid[0] if arch.endswith("Learned") else adapter.input_shape[0])
    if arch != "PerceiverForMaskedLM":
        kw.update(num_labels=cfg.num_classes)
    return transformers.PerceiverConfig(**kw)


def _unlayer(sd: dict[str, Tensor], ours: str, hf: str, self_attention: bool, qk: int) -> dict[str, Tensor]:
    """Our CrossAttentionLayer / SelfAttentionLayer -> one HF PerceiverLayer (splitting the fused projections)."""
    out = {h: sd[o] for h, o in layer_names(hf, ours, self_attention)}
    for p in WEIGHT_BIAS:
        if self_attention:
            qkv = sd[f"{ours}.to_qkv.{p}"]
            q, k, v = qkv.split([qk, qk, qkv.shape[0] - 2 * qk])
        else:
            q, kv = sd[f"{ours}.to_q.{p}"], sd[f"{ours}.to_kv.{p}"]
            k, v = kv.split([qk, kv.shape[0] - qk])
        for n, t in zip(QKV, (q, k, v)):
            out[f"{hf}.attention.self.{n}.{p}"] = t
    return out


def hf_state_dict(net: PerceiverIO, arch: str) -> dict[str, Tensor]:
    """Our state dict under HF's names for `arch`."""
    sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    out = {hf: sd[ours] for hf, ours in io_names(arch)}
    layers = [net.encoder, *net.processor[0], net.decoder]
    for (hf, ours, self_attention), layer in zip(io_layers(arch, len(net.processor[0])), layers):
        out |= _unlayer(sd, ours, hf, self_attention, layer.qk_channels)
    if arch.endswith("Learned"):
        # HF projects its table through a Linear every forward; ours has it folded in: an identity projection.
        pre, table = "perceiver.input_preprocessor", sd["adapter.pos.embeddings"]
        out[f"{pre}.position_embeddings.position_embeddings"] = table
        out[f"{pre}.positions_projection.weight"] = torch.eye(table.shape[1], dtype=table.dtype)
        out[f"{pre}.positions_projection.bias"] = torch.zeros(table.shape[1], dtype=table.dtype)
    return out


def save_huggingface(net: nn.Module, out_dir: str | os.PathLike) -> str:
    """Write `net` as an HF transformers folder (config.json + model.safetensors) loadable with
    `PerceiverFor....from_pretrained(out_dir)`; returns the HF class name. One-line NotExportable (a ValueError)
    where HF has no class for the architecture.

    Args:
        net: a perceiver-lit net (e.g. `perceiver_lit.models.pretrained(ckpt)`); torch.compile's wrapper is unwrapped.
        out_dir: the folder to write (created if needed).
    """
    net = getattr(net, "_orig_mod", net)
    arch = hf_architecture(net)
    try:
        import transformers
    except ImportError as e:
        raise ImportError("save_huggingface needs transformers: pip install 'perceiver-lit[hf]'") from e
    config = hf_config(net, arch)
    hf = getattr(transformers, arch)(config)
    expected, state = hf.state_dict(), hf_state_dict(net, arch)
    misfit = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    misfit += [k for k in state if k not in expected]
    if misfit:
        raise _refuse(net, f"maps onto {arch} only partly (tensors {misfit[:4]} do not fit)")
    hf.load_state_dict(state, strict=True)
    os.makedirs(out_dir, exist_ok=True)
    hf.eval().save_pretrained(out_dir, safe_serialization=True)
    return arch
