"""The net factory `perceiver_lit.models.pretrained` on real HF models saved with save_pretrained (small shapes,
random weights): each kind of path, retargeting (num_classes, image size, channels), every bad input with its
message; and the tasks' fine-tuning options (freeze, body_lr_scale). End to end through the CLI:
tests/integration/test_pretrained.py."""

from __future__ import annotations

import json
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceiver_lit.convert import SUPPORTED, from_huggingface, save_converted  # noqa: E402
from perceiver_lit.models import pretrained  # noqa: E402
from perceiver_lit.tasks import Classification  # noqa: E402
from tests.fixtures.training import TinyNet  # noqa: E402
from tests.unit.test_convert import hf_image_model, randomise  # noqa: E402


def hf_text_classifier(**overrides):
    """PerceiverForSequenceClassification (language-perceiver's layout, small)."""
    torch.manual_seed(0)
    cfg = transformers.PerceiverConfig(
        **{
            **dict(
                num_latents=8,
                d_latents=32,
                d_model=16,
                num_blocks=1,
                num_self_attends_per_block=2,
                num_self_attention_heads=4,
                num_cross_attention_heads=4,
                qk_channels=16,
                v_channels=32,
                max_position_embeddings=64,
                num_labels=3,
            ),
            **overrides,
        }
    )
    return randomise(transformers.PerceiverForSequenceClassification(cfg))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """{kind: (HF model, its save_pretrained folder)} for the three image families and the text classifier."""
    out = {}
    for kind, make in {
        "fourier": lambda: hf_image_model("PerceiverForImageClassificationFourier"),
        "learned": lambda: hf_image_model("PerceiverForImageClassificationLearned"),
        "conv": lambda: hf_image_model("PerceiverForImageClassificationConvProcessing"),
        "text": hf_text_classifier,
    }.items():
        model = make()
        folder = tmp_path_factory.mktemp(f"hf-{kind}")
        model.save_pretrained(folder)
        out[kind] = (model, folder)
    return out


def _images(size=16, channels=3, n=2, seed=0):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["fourier", "learned", "conv"])
def test_hf_folder_and_converted_file_give_hfs_logits(hf_dirs, kind, tmp_path):
    hf, folder = hf_dirs[kind]
    net = pretrained(str(folder))
    assert net.training  # like any new module: Lightning sets modes
    net.eval()
    x = _images()
    with torch.no_grad():
        ref = hf(inputs=x).logits
        torch.testing.assert_close(net(x.permute(0, 2, 3, 1)), ref, atol=1e-4, rtol=1e-4)
        ours, spec = from_huggingface(hf, return_spec=True)
        save_converted(ours, spec, str(tmp_path / "m.pt"))
        torch.testing.assert_close(
            pretrained(tmp_path / "m.pt").eval()(x.permute(0, 2, 3, 1)), ref, atol=1e-4, rtol=1e-4
        )


def test_sequence_classification_matches_hf_with_padding(hf_dirs):
    hf, folder = hf_dirs["text"]
    net = pretrained(str(folder), input_shape=(20,)).eval()  # the text data module's max_length
    ids = torch.randint(0, 262, (2, 20), generator=torch.Generator().manual_seed(1))
    attn = torch.ones(2, 20, dtype=torch.long)
    attn[1, 12:] = 0
    with torch.no_grad():
        ref = hf(inputs=ids, attention_mask=attn).logits
        out = net(ids, attn == 0)
    assert out.shape == (2, 3) and ref.abs().max() > 0.1
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_new_num_classes_reinitialises_the_head_and_says_so_in_one_line(hf_dirs, capsys):
    hf, folder = hf_dirs["fourier"]
    net = pretrained(str(folder), num_classes=7)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "num_classes 5 -> 7" in out[0] and "head.weight, head.bias" in out[0], out
    assert net.head.weight.shape == (7, 32)
    ref = from_huggingface(hf).state_dict()
    for name, t in net.state_dict().items():  # everything but the head is the HF model's
        if not name.startswith("head."):
            torch.testing.assert_close(t, ref[name], atol=0, rtol=0)


def test_learned_positions_are_resampled_for_a_new_image_size_as_hfs_interpolation(hf_dirs):
    hf, folder = hf_dirs["learned"]
    net = pretrained(str(folder), input_shape=(24, 24, 3)).eval()
    assert net.adapter.pos.embeddings.shape == (24 * 24, 256)
    x = _images(24)
    with torch.no_grad():
        ref = hf(inputs=x, interpolate_pos_encoding=True).logits  # HF's bicubic resampling of the 16x16 table
        torch.testing.assert_close(net(x.permute(0, 2, 3, 1)), ref, atol=1e-4, rtol=1e-4)


def test_fourier_model_at_a_new_image_size_recomputes_its_positions(hf_dirs):
    hf, folder = hf_dirs["fourier"]
    net = pretrained(str(folder), input_shape=(12, 12, 3)).eval()
    x = _images(12)
    with torch.no_grad():  # HF computes Fourier features for whatever grid it gets (max_resolution kept)
        torch.testing.assert_close(net(x.permute(0, 2, 3, 1)), hf(inputs=x).logits, atol=1e-4, rtol=1e-4)


def test_grayscale_data_into_an_rgb_conv_model_sums_the_first_layer_over_rgb(hf_dirs, capsys):
    hf, folder = hf_dirs["conv"]
    net = pretrained(str(folder), input_shape=(16, 16, 1)).eval()
    assert "adapter.prep.0.weight (3 -> 1 input channels)" in capsys.readouterr().out
    gray = _images(channels=1)
    with torch.no_grad():  # exact: a gray image is the RGB image with three equal channels
        torch.testing.assert_close(
            net(gray.permute(0, 2, 3, 1)), hf(inputs=gray.expand(-1, 3, -1, -1)).logits, atol=1e-4, rtol=1e-4
        )


def test_grayscale_data_into_a_pixels_model_is_an_error_naming_the_field(hf_dirs):
    _, folder = hf_dirs["fourier"]
    with pytest.raises(ValueError, match=r"data.input_shape \(16, 16, 1\).*trained on 3.*give the data 3 channels"):
        pretrained(str(folder), input_shape=(16, 16, 1))


# ---------------------------------------------------------------------------------------------------- bad input
def test_a_missing_path_names_the_three_kinds(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"nope.pt does not exist; expected a file written by "
        r"perceiver-lit-convert, an HF model folder",
    ):
        pretrained(str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        pretrained("deepmind/vision-perceiver-conv")


def test_a_folder_without_config_json(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder without config.json; expected"):
        pretrained(str(tmp_path))


def test_an_unsupported_hf_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["PerceiverModel"]}))
    with pytest.raises(
        ValueError, match=r"architectures=\['PerceiverModel'\] is not supported; supported: " + ", ".join(SUPPORTED)
    ):
        pretrained(str(tmp_path))


def test_an_hf_folder_without_weights(tmp_path, hf_dirs):
    (tmp_path / "config.json").write_text((hf_dirs["conv"][1] / "config.json").read_text())
    with pytest.raises(ValueError, match=r"has config.json but no weights; expected one of model.safetensors"):
        pretrained(str(tmp_path))


def test_an_hf_folder_with_corrupt_weights(tmp_path, hf_dirs):
    src = hf_dirs["conv"][1]
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(
        ValueError,
        match=r"model.safetensors could not be loaded as "
        r"PerceiverForImageClassificationConvProcessing",
    ):
        pretrained(str(tmp_path))


def test_an_hf_folder_whose_tensors_do_not_fit_its_config(tmp_path, hf_dirs):
    src = hf_dirs["conv"][1]
    config = json.loads((src / "config.json").read_text())
    config["d_latents"] = 48  # the weights were saved at 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"model.safetensors"):
        pretrained(str(tmp_path))


def test_an_hf_folder_without_transformers_names_the_extra(tmp_path, hf_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed: import fails
    with pytest.raises(ImportError, match=r"needs transformers: pip install 'perceiver-lit\[hf\]'"):
        pretrained(str(hf_dirs["conv"][1]))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_truncated_or_corrupt_file(tmp_path, hf_dirs, damage):
    ours, spec = from_huggingface(hf_dirs["conv"][0], return_spec=True)
    save_converted(ours, spec, str(tmp_path / "m.pt"))
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00not a checkpoint" * 9)
    with pytest.raises(ValueError, match=r"m.pt cannot be read as a torch checkpoint \(truncated or corrupt\?\)"):
        pretrained(str(tmp_path / "m.pt"))


def test_a_torch_file_of_another_kind(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"x.pt is none of the known kinds \(it holds \['weights'\]\); expected"):
        pretrained(str(tmp_path / "x.pt"))


def test_tensors_that_do_not_fit_the_recorded_architecture(tmp_path, hf_dirs):
    ours, spec = from_huggingface(hf_dirs["fourier"][0], return_spec=True)
    state = ours.state_dict()
    state["latents"] = torch.zeros(9, 32)  # the spec records 8 latents
    del state["encoder.proj.bias"]
    torch.save({"format": "perceiver-lit/converted-v1", "spec": spec, "state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(
        ValueError,
        match=r"bad.pt: tensors that do not fit the recorded architecture "
        r"\(perceiver_lit.models.PerceiverIO\): \['encoder.proj.bias missing', "
        r"'latents \(9, 32\), expected \(8, 32\)'\]",
    ):
        pretrained(str(tmp_path / "bad.pt"))


# ------------------------------------------------------------------------------------------ fine-tuning options
def test_freeze_takes_parameters_out_of_the_optimizer_and_reports_counts(caplog):
    import logging

    caplog.set_level(logging.INFO)
    task = Classification(TinyNet(num_classes=5), freeze=["embed.*", "norm.weight"])
    assert not task.net.embed.weight.requires_grad and not task.net.norm.weight.requires_grad
    assert task.net.norm.bias.requires_grad and task.net.head.weight.requires_grad
    frozen = 12 * 16 + 16 + 16
    total = sum(p.numel() for p in task.net.parameters())
    assert any(
        f"{frozen:,} parameters frozen (3 tensors), {total - frozen:,} trainable" in r.getMessage()
        for r in caplog.records
    )
    task.trainer = None
    from perceiver_lit.tasks.optim import build_optimizer

    opt = build_optimizer("adamw", task.net, 1e-3, 0.05, (0.9, 0.999), 1e-8)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(task.net.embed.weight) not in in_opt and id(task.net.head.weight) in in_opt


def test_a_freeze_pattern_that_matches_nothing_names_it_and_shows_real_names():
    with pytest.raises(
        ValueError,
        match=r"model.init_args.freeze: 'adapter.\*' matches no parameter of the net "
        r"\(TinyNet\); its names look like scale, embed.weight, norm.weight, "
        r"head.weight",
    ):
        Classification(TinyNet(), freeze=["adapter.*"])
    with pytest.raises(ValueError, match=r"model.init_args.head: 'classifier.\*' matches no parameter"):
        Classification(TinyNet(), body_lr_scale=0.1, head=["classifier.*"])


def test_body_lr_scale_gives_the_body_a_lower_lr_than_the_head():
    import lightning.pytorch as pl

    task = Classification(TinyNet(num_classes=5), lr=1e-2, body_lr_scale=0.1, schedule="constant")
    batches = [{"inputs": torch.randn(4, 4, 3), "target": torch.randint(5, (4,)), "key": ["a"] * 4}]
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        max_steps=1,
    )
    trainer.fit(task, torch.utils.data.DataLoader(batches, batch_size=None))
    lrs = {}
    for g in trainer.optimizers[0].param_groups:
        for p in g["params"]:
            lrs[p] = g["lr"]
    assert lrs[task.net.head.weight] == pytest.approx(1e-2) and lrs[task.net.head.bias] == pytest.approx(1e-2)
    assert lrs[task.net.embed.weight] == pytest.approx(1e-3) and lrs[task.net.norm.weight] == pytest.approx(1e-3)
    decays = {g["weight_decay"] for g in trainer.optimizers[0].param_groups}
    assert decays == {0.05, 0.0}  # the decay groups survive the split


def test_language_perceiver_loads_as_a_sequence_classifier_with_hf_class(tmp_path, capsys):
    from tests.unit.test_convert import hf_mlm

    mlm = hf_mlm()
    mlm.save_pretrained(tmp_path)
    net = pretrained(str(tmp_path), num_classes=7, input_shape=(48,), hf_class="PerceiverForSequenceClassification")
    out = capsys.readouterr().out
    assert (
        "loaded as PerceiverForSequenceClassification (the folder holds PerceiverForMaskedLM): newly "
        "initialised 21 tensors under perceiver.decoder.decoder" in out
    )
    assert net.head.weight.shape == (7, 32) and net.queries.queries.shape == (1, 32)
    ref = mlm.state_dict()  # the encoder is language-perceiver's
    assert torch.equal(net.state_dict()["latents"], ref["perceiver.embeddings.latents"])
    assert torch.equal(
        net.state_dict()["adapter.embedding.weight"], ref["perceiver.input_preprocessor.embeddings.weight"]
    )
    assert net.eval()(torch.randint(0, 262, (2, 48))).shape == (2, 7)
    with pytest.raises(ValueError, match=r"hf_class='PerceiverModel' is not supported; supported: "):
        pretrained(str(tmp_path), hf_class="PerceiverModel")
