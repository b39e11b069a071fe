"""Pretrained nets through the CLI, on real shards: `perceiver-lit predict` with an HF folder gives HF's own
probabilities; `fit` with a new head and a frozen adapter; the fine-tuned checkpoint back in as a pretrained net
(validate without --ckpt_path); language-perceiver's classifier trains on the text data module."""

from __future__ import annotations

import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceiver_lit.models import pretrained  # noqa: E402
from tests.fixtures.training import fashion_data, run_cli, write_config  # noqa: E402
from tests.unit.test_convert import hf_image_model  # noqa: E402
from tests.unit.test_pretrained import hf_text_classifier  # noqa: E402

pytestmark = pytest.mark.integration

TRAINER = {"accelerator": "cpu", "enable_progress_bar": False, "logger": False, "num_sanity_val_steps": 0}


def task(path: str, **init_args) -> dict:
    return {
        "class_path": "perceiver_lit.tasks.Classification",
        "init_args": {
            "net": {"class_path": "perceiver_lit.models.pretrained", "init_args": {"path": path}},
            **init_args,
        },
    }


def _untrained_warnings(recwarn) -> list[str]:
    return [str(w.message) for w in recwarn if "untrained" in str(w.message)]


def test_predict_with_an_hf_folder_gives_hfs_probabilities_for_every_sample(jpeg_shards, tmp_path, recwarn):
    from datamodules.image import ImageDataModule

    hf = hf_image_model("PerceiverForImageClassificationConvProcessing", num_labels=3)
    hf.save_pretrained(tmp_path / "hf")
    data_args = {
        "test_urls": jpeg_shards.test_urls,
        "image_size": 16,
        "num_classes": 3,
        "batch_size": 16,
        "num_workers": 0,
    }
    cfg = write_config(
        tmp_path,
        {
            "name": "pre",
            "trainer": TRAINER,
            "model": task(str(tmp_path / "hf")),
            "data": {"class_path": "datamodules.image.ImageDataModule", "init_args": data_args},
        },
    )
    run_cli(["predict", "--config", cfg], cwd=tmp_path)  # no --ckpt_path: the weights come from the folder
    assert not _untrained_warnings(recwarn)
    rows = [json.loads(line) for line in (tmp_path / "runs/pre/predictions-rank0.jsonl").read_text().splitlines()]
    assert len(rows) == jpeg_shards.num_test

    # HF's own probabilities on the same decoded samples (channels first for HF)
    dm = ImageDataModule(**data_args)
    dm.setup("predict")
    ref = {}
    with torch.no_grad():
        for batch in dm.predict_dataloader():
            probs = hf(inputs=batch["inputs"].permute(0, 3, 1, 2)).logits.softmax(-1)
            ref.update(zip(batch["key"], probs))
    assert set(ref) == {r["key"] for r in rows}
    spread = 0.0
    for r in rows:
        expected = ref[r["key"]][r["classes"]]
        torch.testing.assert_close(torch.tensor(r["probs"]), expected, atol=1e-4, rtol=0)
        spread = max(spread, float(expected.max() - expected.min()))
    assert spread > 0.05  # the probabilities differ: a real comparison


def test_fine_tune_a_new_head_with_a_frozen_adapter_then_reuse_the_checkpoint(
    fashion_shards, tmp_path, capsys, recwarn
):
    # An RGB 16x16 conv model with 5 classes, fine-tuned on grayscale 28x28 Fashion-MNIST with 10 classes.
    hf = hf_image_model("PerceiverForImageClassificationConvProcessing", num_labels=5)
    hf.save_pretrained(tmp_path / "hf")
    start = pretrained(str(tmp_path / "hf"), num_classes=10, input_shape=(28, 28, 1)).state_dict()
    capsys.readouterr()
    config = {
        "name": "ft",
        "trainer": {**TRAINER, "max_epochs": 1, "limit_val_batches": 1},
        "model": task(str(tmp_path / "hf"), freeze=["adapter.*"], body_lr_scale=0.1, lr=1e-2, schedule="constant"),
        "data": fashion_data(fashion_shards, batch_size=50, samples_per_epoch=100),
    }
    fit = run_cli(["fit", "--config", write_config(tmp_path, config)], cwd=tmp_path)
    out = capsys.readouterr().out
    assert fit.trainer.global_step == 2
    assert "num_classes 5 -> 10: newly initialised head.weight, head.bias" in out
    assert "adapter.prep.0.weight (3 -> 1 input channels)" in out

    ckpt = torch.load(tmp_path / "runs/ft/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    trained = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    assert trained["head.weight"].shape == (10, 32)
    adapter = [k for k in start if k.startswith("adapter.")]
    assert "adapter.prep.0.weight" in adapter and "adapter.prep.1.running_mean" in adapter
    for k in adapter:  # frozen: bit-identical, BatchNorm statistics included
        assert torch.equal(trained[k], start[k]), k
    assert not torch.equal(trained["latents"], start["latents"])  # the body trained
    assert not torch.equal(trained["head.weight"], start["head.weight"])

    # The fine-tuned checkpoint is a pretrained net itself: evaluated without --ckpt_path, and without a warning.
    last = str(tmp_path / "runs/ft/checkpoints/last.ckpt")
    net = pretrained(last)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, trained[k]), k
    config = {
        "name": "ev",
        "trainer": {**TRAINER, "limit_val_batches": 2},
        "model": task(last),
        "data": fashion_data(fashion_shards, batch_size=50),
    }
    val = run_cli(["validate", "--config", write_config(tmp_path, config, "ev.yaml")], cwd=tmp_path)
    assert not _untrained_warnings(recwarn)
    assert 0.0 <= float(val.trainer.callback_metrics["val/acc1"]) <= 1.0


def test_sequence_classification_trains_through_classification_on_the_text_data_module(fortune_shards, tmp_path):
    hf = hf_text_classifier(num_labels=3, max_position_embeddings=128)
    hf.save_pretrained(tmp_path / "hf")
    data = {
        "class_path": "datamodules.text.TextDataModule",
        "init_args": {
            "train_urls": fortune_shards.train_urls,
            "val_urls": fortune_shards.val_urls,
            "max_length": 96,
            "num_classes": 3,
            "batch_size": 8,
            "num_workers": 0,
            "samples_per_epoch": 16,
            "mix_batches": 1,
        },
    }
    config = {
        "name": "text",
        "trainer": {**TRAINER, "max_epochs": 1, "limit_val_batches": 1},
        "model": task(str(tmp_path / "hf"), lr=1e-3, schedule="constant"),
        "data": data,
    }
    fit = run_cli(["fit", "--config", write_config(tmp_path, config)], cwd=tmp_path)
    assert fit.trainer.global_step == 2
    assert math.isfinite(float(fit.trainer.callback_metrics["train/loss"]))
    assert fit.model.net.adapter.pos.embeddings.shape == (128, 16)  # HF's 128 positions kept for 96-byte texts


def test_a_bad_path_through_the_cli_fails_naming_it_before_training(fashion_shards, tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    for path, message in [
        (
            tmp_path / "nope.pt",
            r"nope.pt does not exist; expected a file written by "
            r"perceiver-lit-convert",
        ),
        (tmp_path / "other.pt", r"other.pt is none of the known kinds"),
    ]:
        config = {
            "name": "bad",
            "trainer": {**TRAINER, "max_epochs": 1},
            "model": task(str(path)),
            "data": fashion_data(fashion_shards, batch_size=50),
        }
        with pytest.raises(ValueError, match=message):  # jsonargparse reports the net's error inside its own
            run_cli(["fit", "--config", write_config(tmp_path, config)], cwd=tmp_path)
        assert not (tmp_path / "runs" / "bad" / "checkpoints").exists()


def test_load_an_hf_folder_predicts_like_the_cli_with_its_names(tmp_path):
    """`perceiver_lit.load` on an HF folder (no fit checkpoint): the data config says the eval transforms, the names
    come from the folder's id2label, and the rows equal `perceiver-lit predict` with the same net on the same files."""
    from PIL import Image

    from perceiver_lit import load
    from perceiver_lit.inference import CheckpointError

    names = {0: "cat", 1: "dog", 2: "fox"}
    hf = hf_image_model(
        "PerceiverForImageClassificationConvProcessing",
        num_labels=3,
        id2label=names,
        label2id={v: k for k, v in names.items()},
    )
    hf.save_pretrained(tmp_path / "hf")
    photos = tmp_path / "photos"
    photos.mkdir()
    gen = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(20, 20, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(photos / f"p{i}.png")
    data = {"class_path": "datamodules.image.ImageDataModule", "init_args": {"image_size": 16, "num_classes": 3}}

    with pytest.raises(CheckpointError, match="records no data module: pass data_config"):
        load(tmp_path / "hf", device="cpu")
    api = load(tmp_path / "hf", device="cpu", data_config=data).predict(str(photos), top_k=3, batch_size=3)

    cfg = write_config(
        tmp_path,
        {
            "name": "hfpred",
            "trainer": TRAINER,
            "model": task(str(tmp_path / "hf")),
            "data": {**data, "init_args": {**data["init_args"], "predict_files": str(photos), "num_workers": 0}},
        },
    )
    run_cli(["predict", "--config", cfg, "--prediction.top_k", "3"], cwd=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "runs/hfpred/predictions-rank0.jsonl").read_text().splitlines()]
    assert [r["key"] for r in api] == [r["key"] for r in rows] == [str(photos / f"p{i}.png") for i in range(4)]
    for a, c in zip(api, rows):
        assert a["classes"] == c["classes"] and a["names"] == [names[k] for k in a["classes"]]
        torch.testing.assert_close(torch.tensor(a["probs"]), torch.tensor(c["probs"]), atol=2e-6, rtol=0)

    # the same net as a perceiver-lit-convert file: no names in it, so they are given
    from perceiver_lit.convert import from_huggingface, save_converted

    net, spec = from_huggingface(hf, return_spec=True)
    save_converted(net, spec, str(tmp_path / "conv.pt"))
    converted = load(tmp_path / "conv.pt", device="cpu", data_config=data, class_names=["a", "b", "c"])
    again = converted.predict(str(photos), top_k=3)
    assert [r["classes"] for r in again] == [r["classes"] for r in api]
    assert again[0]["names"] == ["abc"[k] for k in again[0]["classes"]]
    torch.testing.assert_close(torch.tensor(again[0]["probs"]), torch.tensor(api[0]["probs"]), atol=2e-6, rtol=0)
