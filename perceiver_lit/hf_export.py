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
| PerceiverIOFlow, FlowPatchAdapter 3x3 / 64 + Fourier (64 bands), 1-head decoder, / 100 | PerceiverForOpticalFlow |
| PerceiverIOMultimodalAutoencoder, video 1x4x4 + 32 bands, audio + 192, one-hot label | ...MultimodalAutoencoding |

HF's Perceiver is Perceiver IO (one cross-attend, a decoder): an iterative `Perceiver` (cross-attends repeated,
mean-pooled head) has no HF class, and neither has any other variant (permuted positions, other Fourier
settings, unshared processor blocks, other patch or padding sizes, decoder heads, masking); those are a one-line
NotExportable (a ValueError) naming what HF's class fixes. HF's flow model runs on frames of its `train_size`
(our Fourier max resolution); the multimodal one always masks the label input (our eval with
`masked=("label",)`). Needs transformers (`pip install 'perceiver-lit[hf]'`). `perceiver-lit-export --format hf`
(perceiver_lit/export.py) calls this function.

(About 400 lines because it holds one architecture check and one weight map per HF class, seven, which are read
against each other and against convert.py's.)
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from perceiver_lit.models import (
    AudioAdapter,
    FlowPatchAdapter,
    FourierPositionEncoding,
    ImageAdapter,
    LearnedPositionEncoding,
    OneHotAdapter,
    PerceiverIO,
    PerceiverIOFlow,
    PerceiverIOMultimodalAutoencoder,
    TextAdapter,
    VideoAdapter,
)
from perceiver_lit.models.hf_names import (
    DENSE_CLASSES,
    DENSE_NAMES,
    FLOW_CLASS,
    IO_NAMES,
    MULTIMODAL_CLASS,
    QKV,
    WEIGHT_BIAS,
    dense_layers,
    dense_names,
    dense_rows,
    hf_from_ours,
    io_layers,
    io_names,
    layer_names,
)
from perceiver_lit.models.queries import TrainableQueries

EXPORTABLE = (
    "PerceiverForImageClassificationFourier",
    "PerceiverForImageClassificationLearned",
    "PerceiverForImageClassificationConvProcessing",
    "PerceiverForMaskedLM",
    "PerceiverForSequenceClassification",
    FLOW_CLASS,
    MULTIMODAL_CLASS,
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
    if isinstance(net, PerceiverIOFlow):
        return _flow_architecture(net)
    if isinstance(net, PerceiverIOMultimodalAutoencoder):
        return _multimodal_architecture(net)
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


def _fourier_is(pos: nn.Module, num_bands: int, max_resolution: tuple[int, ...]) -> bool:
    """HF's Fourier features: concatenated positions, sines and cosines, unpermuted, at these settings."""
    return (
        isinstance(pos, FourierPositionEncoding)
        and pos.num_bands == num_bands
        and pos.concat_pos
        and not pos.sine_only
        and pos.perm is None
        and pos.max_resolution is not None
        and tuple(float(r) for r in pos.max_resolution) == tuple(float(r) for r in max_resolution)
    )


def _fourier_has(adapter: nn.Module) -> str:
    """What an adapter's Fourier features are, for a refusal: bands and max resolution (None: its own grid, which
    for patches is the patch grid, not HF's pixel / sample grid)."""
    pos = getattr(adapter, "pos", None)
    if not isinstance(pos, FourierPositionEncoding):
        return f"{type(pos).__name__} positions"
    res = pos.max_resolution if pos.max_resolution is not None else f"None (its grid {getattr(adapter, 'grid', '?')})"
    return f"{pos.num_bands} bands at max resolution {res}"


def _refuse_unless(net: nn.Module, checks: list[tuple[bool, str]]) -> None:
    """One NotExportable naming every setting HF's class fixes otherwise (checks: (holds, what HF needs))."""
    failed = [what for ok, what in checks if not ok]
    if failed:
        raise _refuse(net, f"with settings HF's class fixes otherwise ({'; '.join(failed)})")


def _flow_architecture(net: PerceiverIOFlow) -> str:
    """PerceiverForOpticalFlow hard-codes its preprocessor (3x3 patches of two RGB frames, a Linear to 64, 64
    Fourier bands at train_size) and its decoder (1 head, widening 1, 2 channels divided by 100)."""
    a, c = net.adapter, net.config
    if not isinstance(a, FlowPatchAdapter):
        raise _refuse(net, f"with a {type(a).__name__} (HF's flow model: FlowPatchAdapter)")
    _refuse_unless(
        net,
        [
            (
                a.patch_size == 3 and a.in_channels == 3,
                f"3x3 patches of RGB frames, not {a.patch_size}x{a.patch_size} of {a.in_channels} channels",
            ),
            (a.patch_proj.out_features == 64, f"a Linear to 64 after patching, not {a.patch_proj.out_features}"),
            (_fourier_is(a.pos, 64, a.pos.max_resolution or ()), "64 unpermuted Fourier bands"),
            (c.decoder_num_heads == 1, f"1 decoder head, not {c.decoder_num_heads}"),
            (c.decoder_widening_factor == 1, f"decoder widening 1, not {c.decoder_widening_factor}"),
            (c.output_channels == 2, f"2 output channels, not {c.output_channels}"),
            (float(c.rescale_factor) == 100.0, f"rescale_factor 100, not {c.rescale_factor}"),
            (a.correlation_radius == 0, f"no matching cost (correlation_radius 0), not radius {a.correlation_radius}"),
            (not c.decoder_query_residual, "no decoder query residual"),
        ],
    )
    return FLOW_CLASS


def _multimodal_architecture(net: PerceiverIOMultimodalAutoencoder) -> str:
    """PerceiverForMultimodalAutoencoding hard-codes its modalities (1x4x4 patches of RGB video with 32 Fourier
    bands at (frames, size, size); audio patches with 192 bands at the sample count; a one-hot label), the same
    Fourier settings for the queries, paddings of 4 (inputs) and 2 (queries), one decoder head, and the masking:
    the label always, video and audio never. Training-only settings go out as HF's: modality_dropout is dropped,
    a video / audio mask probability below 1 is HF's 0, a label one above 0 is HF's 1 (our eval with
    `masked=("label",)`, as the task evaluates)."""
    a, c = net.adapter, net.config
    video, audio, label = (a.adapters[n] for n in ("video", "audio", "label"))
    T, H, W = net.video_shape
    S = net.num_queries("audio") * net.samples_per_patch
    video_res, audio_res = (T, H, W), (S,)
    widest = max(m.num_output_channels for m in a.adapters.values())
    probs = c.mask_probs
    _refuse_unless(
        net,
        [
            (isinstance(video, VideoAdapter) and video.patch_size == (1, 4, 4), "video patches 1x4x4"),
            (net.video_channels == 3, f"RGB video, not {net.video_channels} channels"),
            (H == W, f"square frames, not {H}x{W}"),
            (S % T == 0, f"audio samples a multiple of the {T} frames, not {S}"),
            (
                getattr(video, "concat_or_add", None) == "concat" and _fourier_is(video.pos, 32, video_res),
                f"32 concatenated unpermuted video Fourier bands at max resolution {video_res}, not "
                f"{_fourier_has(video)}",
            ),
            (
                isinstance(audio, AudioAdapter)
                and audio.concat_or_add == "concat"
                and _fourier_is(audio.pos, 192, audio_res),
                f"192 concatenated unpermuted audio Fourier bands at max resolution {audio_res}, not "
                f"{_fourier_has(audio)}",
            ),
            (isinstance(label, OneHotAdapter), f"a OneHotAdapter label, not {type(label).__name__}"),
            (a.num_output_channels - widest == 4, f"input padding 4, not {a.num_output_channels - widest}"),
            (
                net.queries["video"].num_bands == 32 and net.queries["video"].max_resolution == video_res,
                f"video queries of 32 bands at {video_res}",
            ),
            (
                net.queries["audio"].num_bands == 192 and net.queries["audio"].max_resolution == audio_res,
                f"audio queries of 192 bands at {audio_res}",
            ),
            (c.query_padding_size == 2, f"query padding 2, not {c.query_padding_size}"),
            (c.decoder_num_heads == 1, f"1 decoder head, not {c.decoder_num_heads}"),
            (
                probs.get("label", 0.0) > 0 and probs.get("video", 0.0) < 1 and probs.get("audio", 0.0) < 1,
                f"the label masked and video and audio not (mask_probs {probs})",
            ),
        ],
    )
    return MULTIMODAL_CLASS


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


def hf_config(net: nn.Module, arch: str) -> Any:
    """HF's PerceiverConfig for `net` as the HF class `arch` (from hf_architecture).

    Args:
        net: the perceiver-lit net.
        arch: its HF class name.
    """
    import transformers

    if arch in DENSE_CLASSES:
        return transformers.PerceiverConfig(**_dense_config(net, arch))
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


def _dense_config(net: PerceiverIOFlow | PerceiverIOMultimodalAutoencoder, arch: str) -> dict[str, Any]:
    """PerceiverConfig arguments of a dense model: one block, the official "kv" attention widths (what our
    encoder builds), and the shapes HF's class reads from its config."""
    cfg, adapter = net.config, net.adapter
    kw: dict[str, Any] = dict(
        **hf_from_ours(cfg, DENSE_NAMES),
        num_blocks=1,
        d_model=adapter.num_output_channels,
        qk_channels=None,
        v_channels=None,
        cross_attention_shape_for_attention="kv",
        hidden_act="gelu",
        attention_probs_dropout_prob=cfg.dropout,
        use_query_residual=True,
        architectures=[arch],
    )
    if arch == FLOW_CLASS:  # HF's output has train_size's shape: the frames the Fourier resolution is set for
        return kw | dict(train_size=[int(r) for r in adapter.pos.max_resolution])
    T, H, W = net.video_shape
    S = net.num_queries("audio") * net.samples_per_patch
    return kw | dict(
        num_labels=net.num_classes,
        num_frames=T,
        image_size=H,
        audio_samples_per_frame=S // T,
        samples_per_patch=net.samples_per_patch,
        output_shape=[1, T, H, W],
        output_num_channels=cfg.decoder_output_channels,
        _label_trainable_num_channels=cfg.label_query_channels,
    )


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


def hf_state_dict(net: nn.Module, arch: str) -> dict[str, Tensor]:
    """Our state dict under HF's names for `arch`.

    Args:
        net: the perceiver-lit net.
        arch: its HF class name (from hf_architecture).
    """
    sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if arch in DENSE_CLASSES:
        out = {hf: sd[ours] for hf, ours in dense_names(arch)}
        out |= {hf: sd[ours][None] for hf, ours in dense_rows(arch)}  # HF's (1, C) rows
        layers = [net.encoder, *net.processor, net.decoder.cross]
        for (hf, ours, self_attention), layer in zip(dense_layers(len(net.processor)), layers):
            out |= _unlayer(sd, ours, hf, self_attention, layer.qk_channels)
        return out
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
