"""Export to HF transformers (`perceiver_lit.hf_export.save_huggingface`): HF -> ours -> export -> HF gives the
same logits for every exportable family (the dense ones too: optical flow, multimodal autoencoding); a net trained
here loads with PerceiverFor...from_pretrained and gives our logits; architectures HF cannot represent are a
one-line error."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceiver_lit.convert import from_huggingface, save_converted  # noqa: E402
from perceiver_lit.hf_export import EXPORTABLE, NotExportable, save_huggingface  # noqa: E402
from perceiver_lit.models import (  # noqa: E402
    FlowPatchAdapter,
    ImageAdapter,
    MultimodalAdapter,
    Perceiver,
    PerceiverIO,
    PerceiverIOFlow,
    PerceiverIOMultimodalAutoencoder,
    extract_patches,
    pretrained,
)
from tests.unit.test_convert import hf_image_model, hf_mlm  # noqa: E402
from tests.unit.test_convert_dense import hf_flow, hf_mm_forward, hf_multimodal, mm_inputs  # noqa: E402
from tests.unit.test_pretrained import hf_text_classifier  # noqa: E402

FAMILIES = {
    "PerceiverForImageClassificationFourier": lambda: hf_image_model("PerceiverForImageClassificationFourier"),
    "PerceiverForImageClassificationLearned": lambda: hf_image_model("PerceiverForImageClassificationLearned"),
    "PerceiverForImageClassificationConvProcessing": lambda: hf_image_model(
        "PerceiverForImageClassificationConvProcessing"
    ),
    "PerceiverForMaskedLM": hf_mlm,
    "PerceiverForSequenceClassification": hf_text_classifier,
    "PerceiverForOpticalFlow": hf_flow,
    "PerceiverForMultimodalAutoencoding": hf_multimodal,
}
FLOW_FRAMES = (2, 2, 6, 8, 3)  # hf_flow's train_size: 6 x 8
SUBSET = {"image": torch.tensor([3, 100, 64, 7]), "audio": torch.tensor([2, 0])}  # of 2 x 8 x 8 pixels, 4 patches


def _inputs(arch: str):
    g = torch.Generator().manual_seed(3)
    if arch == "PerceiverForMaskedLM":
        return torch.randint(0, 262, (2, 64), generator=g)  # HF's MLM decodes all 64 positions
    if arch == "PerceiverForSequenceClassification":
        return torch.randint(0, 262, (2, 20), generator=g)
    return torch.randn(2, 3, 16, 16, generator=g)


def _hf_outputs(arch: str, hf) -> dict[str, torch.Tensor]:
    """HF's outputs on fixed inputs: the logits; the dense families' in HF's layouts (flow from extract_patches;
    multimodal decoded at every output through subsampled_output_points, as HF only runs so, and at a subset)."""
    torch.manual_seed(3)
    with torch.no_grad():
        if arch == "PerceiverForOpticalFlow":
            return {"flow": hf(inputs=extract_patches(torch.randn(*FLOW_FRAMES))).logits}
        if arch == "PerceiverForMultimodalAutoencoding":
            x = mm_inputs()
            full = hf_mm_forward(hf, x, torch.arange(128), torch.arange(4))
            sub = hf_mm_forward(hf, x, SUBSET["image"], SUBSET["audio"])
            return {**full, "sub_image": sub["image"], "sub_audio": sub["audio"]}
        return {"logits": hf(inputs=_inputs(arch)).logits}


def test_every_exportable_family_is_tested():
    assert set(FAMILIES) == set(EXPORTABLE)


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_round_trip_hf_ours_export_hf_gives_the_same_logits(arch, tmp_path):
    hf = FAMILIES[arch]()
    assert save_huggingface(from_huggingface(hf), tmp_path) == arch
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors"}
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [arch]
    back = getattr(transformers, arch).from_pretrained(tmp_path).eval()
    ref, out = _hf_outputs(arch, hf), _hf_outputs(arch, back)
    floor = 0.01 if arch == "PerceiverForOpticalFlow" else 0.1  # flow: the decoder's output / 100
    assert max(r.abs().max() for r in ref.values()) > floor
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_a_fine_tuned_net_exports_with_its_new_head_and_gives_our_logits(tmp_path):
    hf = FAMILIES["PerceiverForImageClassificationConvProcessing"]()
    hf.save_pretrained(tmp_path / "hf")
    net = pretrained(str(tmp_path / "hf"), num_classes=4, input_shape=(24, 24, 3))
    with torch.no_grad():  # as if trained: move every weight
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_huggingface(net, tmp_path / "out")
    back = transformers.PerceiverForImageClassificationConvProcessing.from_pretrained(tmp_path / "out").eval()
    assert back.config.num_labels == 4
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(back(inputs=x).logits, net.eval()(x.permute(0, 2, 3, 1)), atol=1e-5, rtol=1e-5)


def test_an_iterative_perceiver_has_no_hf_class(tmp_path):
    net = Perceiver(
        ImageAdapter((16, 16, 3), num_frequency_bands=4),
        num_classes=5,
        num_latents=8,
        latent_dim=16,
        num_cross_attends=3,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
    )
    with pytest.raises(
        NotExportable,
        match=r"^save_huggingface: Perceiver \(an iterative Perceiver, 3 cross-attends, "
        r"mean-pooled head\); HF transformers has no class for it",
    ) as e:
        save_huggingface(net, tmp_path)
    assert "\n" not in str(e.value) and not any(tmp_path.iterdir())


@pytest.mark.parametrize("case", ["bands", "permuted", "gray"])
def test_other_perceiver_io_variants_are_refused_in_one_line(case, tmp_path):
    adapter = {
        "bands": dict(input_shape=(16, 16, 3), num_frequency_bands=6),
        "permuted": dict(input_shape=(16, 16, 3), max_resolution=(224, 224), permute_seed=0),
        "gray": dict(input_shape=(16, 16, 1), max_resolution=(224, 224)),
    }[case]
    net = PerceiverIO(
        ImageAdapter(**adapter),
        num_classes=5,
        num_latents=8,
        latent_dim=16,
        num_blocks=1,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
    )
    why = {"bands": "other than HF's three", "permuted": "permuted positions", "gray": "1 input channels"}[case]
    with pytest.raises(NotExportable, match=why) as e:
        save_huggingface(net, tmp_path)
    assert "\n" not in str(e.value)


def our_flow(**overrides) -> PerceiverIOFlow:
    """A flow net built here (its own init), small."""
    torch.manual_seed(1)
    kw = dict(num_latents=8, latent_dim=32, num_self_attends=2, num_self_attention_heads=4)
    return PerceiverIOFlow(FlowPatchAdapter((2, 6, 8, 3), **overrides.pop("adapter", {})), **{**kw, **overrides})


def our_autoencoder(num_classes: int = 7, **overrides) -> PerceiverIOMultimodalAutoencoder:
    """An autoencoder built here with HF's modality settings at small widths: 2 frames of 8 x 8, 64 audio samples,
    its own class count, label query width and decoder width; the label masked half of the time (the paper)."""
    torch.manual_seed(1)
    adapters = {
        "video": dict(patch_size=(1, 4, 4), num_frequency_bands=32, max_resolution=(2, 8, 8)),
        "audio": dict(samples_per_patch=16, num_frequency_bands=192, max_resolution=(64,)),
        "label": {"class_path": "perceiver_lit.models.autoencoding.OneHotAdapter"},
        **overrides.pop("adapters", {}),
    }
    adapter = MultimodalAdapter(
        {"video": (2, 8, 8, 3), "audio": (64,), "label": (num_classes,)},
        adapters,
        min_padding_size=overrides.pop("min_padding_size", 4),
    )
    kw = dict(
        num_latents=8,
        latent_dim=32,
        num_self_attends=2,
        num_self_attention_heads=4,
        decoder_output_channels=16,
        label_query_channels=24,
        mask_probs={"label": 0.5},
    )
    return PerceiverIOMultimodalAutoencoder(adapter, **{**kw, **overrides})


def _perturbed(net):
    with torch.no_grad():  # as if trained: move every weight
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def test_a_flow_net_trained_here_exports_and_hf_gives_our_flow(tmp_path):
    net = _perturbed(our_flow())
    assert save_huggingface(net, tmp_path) == "PerceiverForOpticalFlow"
    back = transformers.PerceiverForOpticalFlow.from_pretrained(tmp_path).eval()
    assert list(back.config.train_size) == [6, 8]
    frames = torch.randn(*FLOW_FRAMES)
    with torch.no_grad():
        ours, ref = net(frames), back(inputs=extract_patches(frames)).logits
    assert ref.abs().max() > 1e-3
    torch.testing.assert_close(ref, ours, atol=1e-5, rtol=1e-5)


def test_an_autoencoder_trained_here_exports_with_its_classes_and_hf_gives_our_outputs(tmp_path):
    net = _perturbed(our_autoencoder(num_classes=7))
    assert save_huggingface(net, tmp_path) == "PerceiverForMultimodalAutoencoding"
    back = transformers.PerceiverForMultimodalAutoencoding.from_pretrained(tmp_path).eval()
    assert back.config.num_labels == 7 and back.config._label_trainable_num_channels == 24
    x = {**mm_inputs(), "label": torch.nn.functional.one_hot(torch.tensor([1, 6]), 7).float()}
    with torch.no_grad():
        # HF masks the label always: our eval with the label masked (as the task evaluates)
        ours = net(x, masked=("label",))
        ref = hf_mm_forward(back, x, torch.arange(128), torch.arange(4))
        sub = net(x, query_indices={"video": SUBSET["image"], "audio": SUBSET["audio"]}, masked=("label",))
        sub_ref = hf_mm_forward(back, x, SUBSET["image"], SUBSET["audio"])
    assert ref["label"].shape == (2, 7) and ref["image"].abs().max() > 1e-3
    torch.testing.assert_close(ref["image"], ours["video"].reshape(2, 128, 3), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref["audio"], ours["audio"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref["label"], ours["label"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sub_ref["image"], sub["video"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sub_ref["audio"], sub["audio"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "case, why",
    [
        ("flow heads", "1 decoder head, not 2"),
        ("flow bands", "64 unpermuted Fourier bands"),
        ("flow rescale", "rescale_factor 100, not 20"),
        ("flow correlation", "no matching cost (correlation_radius 0), not radius 2"),
        ("flow query residual", "no decoder query residual"),
        ("mm patches", "video patches 1x4x4"),
        ("mm bands", "192 concatenated unpermuted audio Fourier bands at max resolution (64,), not 16 bands"),
        # our default max resolution is the patch grid; HF's top frequency is set by the samples
        ("mm resolution", "at max resolution (64,), not 192 bands at max resolution None (its grid (4,))"),
        ("mm padding", "input padding 4, not 2"),
        ("mm masking", "the label masked and video and audio not"),
    ],
)
def test_dense_variants_hf_cannot_represent_are_refused_in_one_line(case, why, tmp_path):
    net = {
        "flow heads": lambda: our_flow(decoder_num_heads=2),
        "flow bands": lambda: our_flow(adapter=dict(num_frequency_bands=8)),
        "flow rescale": lambda: our_flow(rescale_factor=20.0),
        "flow correlation": lambda: our_flow(adapter=dict(correlation_radius=2)),
        "flow query residual": lambda: our_flow(decoder_query_residual=True),
        "mm patches": lambda: our_autoencoder(adapters={"video": dict(patch_size=(2, 4, 4), num_frequency_bands=32)}),
        "mm bands": lambda: our_autoencoder(adapters={"audio": dict(samples_per_patch=16, num_frequency_bands=16)}),
        "mm resolution": lambda: our_autoencoder(
            adapters={"audio": dict(samples_per_patch=16, num_frequency_bands=192)}
        ),
        "mm padding": lambda: our_autoencoder(min_padding_size=2),
        "mm masking": lambda: our_autoencoder(mask_probs={"video": 1.0, "label": 1.0}),
    }[case]()
    with pytest.raises(NotExportable, match=r"^save_huggingface: PerceiverIO\w+ with settings HF's class fixes") as e:
        save_huggingface(net, tmp_path)
    assert why in str(e.value) and "\n" not in str(e.value) and not any(tmp_path.iterdir())


@pytest.mark.parametrize("arch", ["PerceiverForOpticalFlow", "PerceiverForMultimodalAutoencoding"])
def test_pretrained_takes_an_exported_dense_folder_and_a_converted_dense_file(arch, tmp_path):
    net = _perturbed(our_flow() if arch == "PerceiverForOpticalFlow" else our_autoencoder(mask_probs={"label": 1.0}))
    save_huggingface(net, tmp_path / "hf")
    model, spec = from_huggingface(FAMILIES[arch](), return_spec=True)
    save_converted(model, spec, str(tmp_path / "converted.pt"))
    x = torch.randn(*FLOW_FRAMES) if arch == "PerceiverForOpticalFlow" else mm_inputs()
    if arch == "PerceiverForMultimodalAutoencoding":
        x["label"] = torch.nn.functional.one_hot(torch.tensor([1, 6]), 7).float()
    with torch.no_grad():
        ref, out = net(x), pretrained(str(tmp_path / "hf")).eval()(x)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        if arch == "PerceiverForMultimodalAutoencoding":
            x["label"] = x["label"][:, :5]  # the converted file: hf_multimodal's 5 classes
        ref, out = model.eval()(x), pretrained(str(tmp_path / "converted.pt")).eval()(x)
    assert type(out) is type(ref)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
