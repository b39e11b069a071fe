"""Export to HF transformers (`perceiver_lit.hf_export.save_huggingface`): HF -> ours -> export -> HF gives the
same logits for every exportable family; a net trained here loads with PerceiverFor...from_pretrained and gives our
logits; architectures HF cannot represent are a one-line error."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceiver_lit.convert import from_huggingface  # noqa: E402
from perceiver_lit.hf_export import EXPORTABLE, NotExportable, save_huggingface  # noqa: E402
from perceiver_lit.models import ImageAdapter, Perceiver, PerceiverIO, pretrained  # noqa: E402
from tests.unit.test_convert import hf_image_model, hf_mlm  # noqa: E402
from tests.unit.test_pretrained import hf_text_classifier  # noqa: E402

FAMILIES = {
    "PerceiverForImageClassificationFourier": lambda: hf_image_model("PerceiverForImageClassificationFourier"),
    "PerceiverForImageClassificationLearned": lambda: hf_image_model("PerceiverForImageClassificationLearned"),
    "PerceiverForImageClassificationConvProcessing": lambda: hf_image_model(
        "PerceiverForImageClassificationConvProcessing"
    ),
    "PerceiverForMaskedLM": hf_mlm,
    "PerceiverForSequenceClassification": hf_text_classifier,
}


def _inputs(arch: str):
    g = torch.Generator().manual_seed(3)
    if arch == "PerceiverForMaskedLM":
        return torch.randint(0, 262, (2, 64), generator=g)  # HF's MLM decodes all 64 positions
    if arch == "PerceiverForSequenceClassification":
        return torch.randint(0, 262, (2, 20), generator=g)
    return torch.randn(2, 3, 16, 16, generator=g)


def test_every_exportable_family_is_tested():
    assert set(FAMILIES) == set(EXPORTABLE)


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_round_trip_hf_ours_export_hf_gives_the_same_logits(arch, tmp_path):
    hf = FAMILIES[arch]()
    assert save_huggingface(from_huggingface(hf), tmp_path) == arch
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors"}
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [arch]
    back = getattr(transformers, arch).from_pretrained(tmp_path).eval()
    x = _inputs(arch)
    with torch.no_grad():
        ref, out = hf(inputs=x).logits, back(inputs=x).logits
    assert ref.abs().max() > 0.1
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
