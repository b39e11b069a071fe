"""Inference for users, through the CLI: predict on unlabelled shards and on raw files of every modality, class
names from the writer to the predictions, `perceiver_lit.load(...).predict` against `perceiver-lit predict`, and
`perceiver-lit-predictions merge`."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.shards.fashion_mnist import CLASS_NAMES
from perceiver_lit.callbacks import Summary
from tests.fixtures.training import run_cli, tiny_perceiver, write_config

pytestmark = pytest.mark.integration

TRAINER = {
    "accelerator": "cpu",
    "max_epochs": 1,
    "num_sanity_val_steps": 0,
    "enable_progress_bar": False,
    "logger": False,
    "enable_model_summary": False,
}


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions-rank0.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(fashion_shards, tmp_path_factory):
    """A tiny Perceiver fit by `perceiver-lit fit` on the Fashion-MNIST shards (whose folder has classes.json)."""
    tmp = tmp_path_factory.mktemp("trained")
    data = {
        "class_path": "datamodules.image.FashionMNISTDataModule",
        "init_args": {
            "train_urls": fashion_shards.train_urls,
            "val_urls": fashion_shards.test_urls,
            "test_urls": fashion_shards.test_urls,
            "batch_size": 50,
            "num_workers": 0,
            "samples_per_epoch": 100,
            "mix_batches": 1,
            "shuffle_buffer": 50,
        },
    }
    cfg = write_config(
        tmp, {"name": "tiny", "trainer": {**TRAINER, "limit_val_batches": 1}, "model": tiny_perceiver(), "data": data}
    )
    run_cli(["fit", "--config", cfg], cwd=tmp)
    ckpt = tmp / "runs" / "tiny" / "checkpoints" / "best.ckpt"
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["class_names"] == list(CLASS_NAMES)  # writer -> data module -> task hyperparameters
    return tmp, cfg, ckpt


def images(folder: Path, n: int = 5) -> Path:
    """n random 28x28 grayscale PNGs, plus a broken PNG and a WAV (another modality) among them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "sound.wav").write_bytes(b"RIFF....WAVE")
    return folder


def predict_config(tmp: Path, data_init: dict, name: str = "pred") -> str:
    """A predict config on data that has no classes.json: the names must come from the checkpoint."""
    data = {
        "class_path": "datamodules.image.FashionMNISTDataModule",
        "init_args": {"batch_size": 4, "num_workers": 0, **data_init},
    }
    return write_config(
        tmp, {"name": name, "trainer": TRAINER, "model": tiny_perceiver(), "data": data}, name=f"{name}.yaml"
    )


def test_predict_unlabelled_shards_names_from_the_checkpoint(trained, tmp_path):
    from datamodules.shards.cli import main as shards

    _, _, ckpt = trained
    src = images(tmp_path / "photos")
    (src / "broken.png").unlink()
    (src / "sound.wav").unlink()
    # a flat folder, and a class-folder tree with --unlabelled: both unlabelled shards, no classes.json
    assert shards(["image-folder", str(src), "--out", str(tmp_path / "flat"), "--no-progress"]) == 0
    tree = tmp_path / "tree"
    shutil.copytree(src, tree / "someclass")
    assert shards(["image-folder", str(tree), "--unlabelled", "--out", str(tmp_path / "unl"), "--no-progress"]) == 0
    for out in ("flat", "unl"):
        assert not (tmp_path / out / "classes.json").exists()
        cfg = predict_config(tmp_path, {"predict_urls": str(tmp_path / out / "train-000000.tar")}, name=out)
        cli = run_cli(["predict", "--config", cfg, "--ckpt_path", str(ckpt), "--prediction.top_k", "3"], cwd=tmp_path)
        rows = read_rows(tmp_path / "runs" / out)
        assert len(rows) == 5 and cli.datamodule.corrupt_samples == 0  # unlabelled samples are not corrupt
        assert cli.datamodule.class_names is None and cli.model.class_names == list(CLASS_NAMES)
        for row in rows:
            assert set(row) == {"key", "classes", "names", "probs"}  # no label: none in the file
            assert len(row["classes"]) == 3 and row["names"] == [CLASS_NAMES[c] for c in row["classes"]]


def test_predict_raw_files_equals_load_predict(trained, tmp_path, caplog):
    from perceiver_lit import load

    _, _, ckpt = trained
    folder = images(tmp_path / "photos")
    cfg = predict_config(tmp_path, {"predict_files": str(folder)})
    caplog.set_level(logging.WARNING, logger="datamodules")
    cli = run_cli(["predict", "--config", cfg, "--ckpt_path", str(ckpt), "--prediction.top_k", "3"], cwd=tmp_path)
    rows = read_rows(tmp_path / "runs" / "pred")
    assert [r["key"] for r in rows] == [str(folder / f"img{i}.png") for i in range(5)]
    # the broken image and the file of another modality: skipped, named and counted
    assert cli.datamodule.corrupt_samples == 2
    skipped = [r.getMessage() for r in caplog.records if "corrupt sample skipped" in r.getMessage()]
    assert any("broken.png" in m for m in skipped) and any("sound.wav" in m and "no input among" in m for m in skipped)

    model = load(ckpt, device="cpu")
    api = model.predict(sorted(str(p) for p in folder.iterdir()), top_k=3, batch_size=2)
    assert [r["key"] for r in api] == [r["key"] for r in rows]
    for a, c in zip(api, rows):
        assert a["classes"] == c["classes"] and a["names"] == c["names"]
        assert np.allclose(a["probs"], c["probs"], atol=2e-6)
    # a glob and a list file select the same files
    (tmp_path / "list.txt").write_text("\n".join(f"photos/img{i}.png" for i in range(5)) + "\n")
    assert [r["key"] for r in model.predict(str(tmp_path / "list.txt"), top_k=3)] == [
        str(tmp_path / "photos" / f"img{i}.png") for i in range(5)
    ]
    assert len(model.predict(str(folder / "img*.png"))) == 5


def test_load_without_saved_config_names_what_is_missing(trained, tmp_path):
    from perceiver_lit.inference import CheckpointError, load

    _, _, ckpt = trained
    state = torch.load(ckpt, weights_only=True)
    del state["datamodule_config"]
    torch.save(state, tmp_path / "old.ckpt")
    with pytest.raises(CheckpointError, match=r"old\.ckpt: the checkpoint has no 'datamodule_config'"):
        load(tmp_path / "old.ckpt")
    del state["hyper_parameters"]["_class_path"]
    torch.save(state, tmp_path / "bare.ckpt")
    with pytest.raises(CheckpointError, match=r"bare\.ckpt: the checkpoint has no hyper_parameters\['_class_path'\]"):
        load(tmp_path / "bare.ckpt", data_config={"class_path": "datamodules.image.FashionMNISTDataModule"})


def test_merge_prints_the_accuracy_of_the_labelled_split(trained, fashion_shards, capsys):
    from perceiver_lit.predictions_cli import main as predictions

    tmp, cfg, ckpt = trained
    test = run_cli(["test", "--config", cfg, "--ckpt_path", str(ckpt)], cwd=tmp)
    acc = next(cb for cb in test.trainer.callbacks if isinstance(cb, Summary)).last_test["test/acc1"]
    run_cli(["predict", "--config", cfg, "--ckpt_path", str(ckpt)], cwd=tmp)
    run = tmp / "runs" / "tiny"
    # two "ranks": split the file as a 2-process run would have written it
    rows = (run / "predictions-rank0.jsonl").read_text().splitlines()
    (run / "predictions-rank0.jsonl").write_text("\n".join(rows[1::2]) + "\n")
    (run / "predictions-rank1.jsonl").write_text("\n".join(rows[::2]) + "\n")
    capsys.readouterr()
    assert predictions(["merge", str(run)]) == 0
    out = capsys.readouterr().out
    merged = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(merged) == fashion_shards.num_test == len(rows)
    assert [r["key"] for r in merged] == sorted(r["key"] for r in merged)
    assert all(isinstance(r["label"], int) and r["names"][0] == CLASS_NAMES[r["classes"][0]] for r in merged)
    assert f"{fashion_shards.num_test} of {fashion_shards.num_test} samples labelled: acc1={acc:.4f}, acc5=" in out
    with pytest.raises(SystemExit):
        predictions(["merge", str(tmp / "nowhere")])
    assert "no predictions-rank*.jsonl" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- raw files of every modality
MODALITIES = {
    # modality: (data class, data args, task)
    "audio": (
        "datamodules.audio.AudioDataModule",
        {"sample_rate": 16000, "clip_samples": 1280, "num_classes": 10, "multilabel": True, "features": "raw"},
        "perceiver_lit.tasks.MultilabelClassification",
    ),
    "video": (
        "datamodules.video.VideoDataModule",
        {"num_frames": 4, "frame_stride": 1, "crop_size": 16, "short_side": None, "num_classes": 10},
        "perceiver_lit.tasks.Classification",
    ),
    "pointcloud": (
        "datamodules.pointcloud.PointCloudDataModule",
        {"num_points": 64, "num_classes": 5},
        "perceiver_lit.tasks.Classification",
    ),
    "text": ("datamodules.text.TextDataModule", {"max_length": 64}, "perceiver_lit.tasks.Classification"),
}


@pytest.mark.parametrize("modality", list(MODALITIES))
def test_fit_then_predict_raw_files(modality, synthetic_shards, tmp_path):
    """One training step by the CLI on shards of the synthetic writer, then predict on the writer's raw files
    (every file under its folder, other kinds of file included): names from the checkpoint, one row per sample."""
    train_urls, eval_urls = synthetic_shards(modality)
    out = Path(train_urls.split("::")[0]).parent
    data_class, args, task = MODALITIES[modality]
    names = json.loads((out / "classes.json").read_text())
    if modality == "text":
        args = {**args, "num_classes": len(names)}
    data = {
        "class_path": data_class,
        "init_args": {
            **args,
            "train_urls": train_urls,
            "val_urls": eval_urls,
            "batch_size": 2,
            "num_workers": 0,
            "mix_batches": 1,
            "samples_per_epoch": 2,
        },
    }
    model = {"class_path": task, "init_args": {"net": {"class_path": "tests.fixtures.training.TinyNet"}}}
    cfg = write_config(
        tmp_path, {"name": "m", "trainer": {**TRAINER, "limit_val_batches": 0}, "model": model, "data": data}
    )
    run_cli(["fit", "--config", cfg], cwd=tmp_path)
    ckpt = tmp_path / "runs" / "m" / "checkpoints" / "last.ckpt"
    files = out / "files" / modality
    expected = {
        "audio": len(list(files.glob("*.flac"))),
        "video": len(list(files.rglob("*.mp4"))),
        "pointcloud": len(list(files.rglob("*.npy"))),
    }
    others = {"audio": 1, "video": 0, "pointcloud": 0, "text": 0}[modality]  # audio: labels.csv
    if modality == "text":  # every non-empty line of every .txt file is a sample
        expected["text"] = sum(1 for p in files.rglob("*.txt") for line in p.read_bytes().splitlines() if line.strip())
    predict_data = {
        "class_path": data_class,
        "init_args": {
            **data["init_args"],
            "train_urls": None,
            "val_urls": None,
            "predict_files": str(files),
            "batch_size": 4,
        },
    }
    cfg = write_config(
        tmp_path, {"name": "p", "trainer": TRAINER, "model": model, "data": predict_data}, name="predict.yaml"
    )
    cli = run_cli(["predict", "--config", cfg, "--ckpt_path", str(ckpt), "--prediction.threshold", "0.0"], cwd=tmp_path)
    rows = read_rows(tmp_path / "runs" / "p")
    assert len(rows) == expected[modality] > 0 and cli.datamodule.corrupt_samples == others
    assert len({r["key"] for r in rows}) == len(rows)
    ckpt_names = torch.load(ckpt, weights_only=True)["hyper_parameters"]["class_names"]
    assert ckpt_names == (names if len(names) == args["num_classes"] else None)
    for row in rows:
        assert Path(row["key"].rsplit(":", 1)[0] if modality == "text" else row["key"]).is_file()
        if modality == "audio":  # multi-label, threshold 0: every class, most probable first
            assert len(row["classes"]) == 10 and row["probs"] == sorted(row["probs"], reverse=True)
        if ckpt_names:
            assert row["names"] == [ckpt_names[c] for c in row["classes"]]


def test_masked_byte_modelling_writes_text(synthetic_shards, tmp_path):
    """MLM predictions are the filled-in text, UTF-8, not token ids."""
    train_urls, _ = synthetic_shards("text")
    lines = tmp_path / "lines.txt"
    lines.write_text("hello world\n\nsecond line, äöü\n", encoding="utf-8")
    data = {
        "class_path": "datamodules.text.TextDataModule",
        "init_args": {"max_length": 32, "predict_files": str(lines), "batch_size": 2, "num_workers": 0},
    }
    model = {
        "class_path": "perceiver_lit.tasks.MaskedByteModelling",
        "init_args": {"net": {"class_path": "tests.fixtures.training.TinyTokenNet"}},
    }
    cfg = write_config(tmp_path, {"name": "mlm", "trainer": TRAINER, "model": model, "data": data})
    run_cli(["predict", "--config", cfg, "--fast_check", "false"], cwd=tmp_path)
    rows = read_rows(tmp_path / "runs" / "mlm")
    assert [r["key"] for r in rows] == [f"{lines}:1", f"{lines}:3"]
    assert all(isinstance(r["text"], str) and r["filled"] > 0 for r in rows)
    assert rows[0]["filled"] == len("hello world")  # no mask given: every byte position is the model's


def test_predict_files_that_match_nothing_fail_at_setup(tmp_path):
    from datamodules.errors import DataError
    from datamodules.image import FashionMNISTDataModule

    dm = FashionMNISTDataModule(predict_files=str(tmp_path / "*.jpg"), num_workers=0)
    with pytest.raises(DataError, match=r"predict_files '.*\*\.jpg' matches no file"):
        dm.setup("predict")


def test_export_command_on_the_trained_checkpoint(trained, tmp_path, capsys):
    """`perceiver-lit-export --ckpt best.ckpt --format onnx|exported-program`: names inside, same logits."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from perceiver_lit.export import main as export
    from perceiver_lit.inference import load

    _, _, ckpt = trained
    assert export(["--ckpt", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert export(["--ckpt", str(ckpt), "--format", "exported-program", "--out", str(tmp_path / "m.pt2")]) == 0
    model = onnx.load(tmp_path / "m.onnx")
    assert json.loads({p.key: p.value for p in model.metadata_props}["class_names"]) == list(CLASS_NAMES)
    net = load(ckpt, device="cpu").net
    x = torch.randn(7, 28, 28, 1)
    with torch.no_grad():
        eager = net(x).numpy()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"inputs": x.numpy()})[0], eager, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(torch.export.load(tmp_path / "m.pt2").module()(x).numpy(), eager, atol=1e-4)
    with pytest.raises(SystemExit):
        export(["--ckpt", str(tmp_path / "missing.ckpt")])
    assert "missing.ckpt' does not exist" in capsys.readouterr().err


def test_pointcloud_meshes_as_predict_files(tmp_path):
    """Meshes are sampled on their surface like the pointcloud writer does; a broken mesh is skipped and counted."""
    from datamodules.pointcloud import PointCloudDataModule

    corners = "\n".join(f"{x} {y} {z}" for x in (0, 1) for y in (0, 1) for z in (0, 1))
    faces = [
        (0, 1, 3),
        (0, 3, 2),
        (4, 6, 7),
        (4, 7, 5),
        (0, 4, 5),
        (0, 5, 1),
        (2, 3, 7),
        (2, 7, 6),
        (0, 2, 6),
        (0, 6, 4),
        (1, 5, 7),
        (1, 7, 3),
    ]
    (tmp_path / "cube.off").write_text(f"OFF\n8 12 0\n{corners}\n" + "\n".join(f"3 {a} {b} {c}" for a, b, c in faces))
    (tmp_path / "broken.off").write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 9\n")
    dm = PointCloudDataModule(num_points=32, num_classes=5, predict_files=str(tmp_path), num_workers=0)
    (batch,) = list(dm.predict_dataloader())
    assert batch["key"] == [str(tmp_path / "cube.off")] and batch["inputs"].shape == (1, 32, 3)
    assert dm.corrupt_samples == 1
