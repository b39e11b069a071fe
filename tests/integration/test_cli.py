"""`perceiver-lit fit` then `perceiver-lit test` in-process on tiny Fashion-MNIST shards, with W&B offline."""

from __future__ import annotations

import json
import logging
import math
import time

import pytest
import torch
import yaml

from perceiver_lit.callbacks import Summary
from tests.fixtures.training import (
    fashion_data,
    read_wandb_records,
    read_wandb_run,
    run_cli,
    tiny_perceiver,
    write_config,
)
from tests.integration.test_configs import CONFIGS, shards, smoke_overrides  # noqa: F401 (shards: a fixture)

pytestmark = pytest.mark.integration


def wandb_run_of(root, count: int, wait_for: str) -> dict:
    """The newest of the `count` offline W&B runs under <root>/wandb, read back once wandb has written all of it
    (its `exit` record) and it holds `wait_for`."""
    for _ in range(120):  # wandb-core may create the run file a moment after finish() returns
        runs = sorted((root / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.stat().st_mtime)
        if len(runs) >= count:
            break
        time.sleep(0.5)
    assert len(runs) == count, runs
    for _ in range(120):  # the wandb service may still be flushing the file for a while after finish()
        done = any(r.WhichOneof("record_type") == "exit" for r in read_wandb_records(runs[-1]))
        run = read_wandb_run(runs[-1])
        if done and "name" in run and any(wait_for in row for row in run["history"]):
            break
        time.sleep(0.5)
    return run


def assert_documented_fit_keys(run: dict) -> None:
    """docs/training.md's W&B dashboard for a fit: grad norm, throughput and MFU, attention maps."""
    rows = run["history"]
    grad_norms = [r["train/grad_norm"] for r in rows if "train/grad_norm" in r]
    assert grad_norms and all(math.isfinite(g) and g > 0 for g in grad_norms), grad_norms
    for key in ("perf/samples_per_sec", "perf/samples_per_sec_per_device", "perf/mfu"):
        values = [r[key] for r in rows if key in r]
        assert values and all(v > 0 for v in values), (key, sorted({k for r in rows for k in r}))
    maps = [r for r in rows if "val/attention_maps/_type" in r]
    assert maps and maps[0]["val/attention_maps/_type"] == "images/separated", maps
    assert maps[0]["val/attention_maps/count"] >= 1


def assert_per_class_table(run: dict, key: str, num_classes: int) -> None:
    (table,) = [r for r in run["history"] if f"{key}/_type" in r]
    assert table[f"{key}/_type"] == "table-file" and table[f"{key}/nrows"] == num_classes


def test_fit_then_test_with_wandb_offline(fashion_shards, tmp_path, monkeypatch, caplog):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    config = {
        "name": "tiny",
        "wandb": {"project": "perceiver-lit-tests", "group": "ci", "tags": ["test"]},
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,
            "limit_val_batches": 2,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
        },
        "throughput": {"window": 1},  # 2 steps an epoch: the default window of 20 would log no perf/* here
        "model": tiny_perceiver(),
        "data": fashion_data(fashion_shards, batch_size=50, samples_per_epoch=100),
    }
    cfg = write_config(tmp_path, config)
    root = tmp_path / "runs" / "tiny"
    caplog.set_level(logging.INFO)
    fit = run_cli(["fit", "--config", cfg], cwd=tmp_path)
    assert fit.trainer.global_step == 4
    assert (root / "config.yaml").is_file() and (root / "checkpoints" / "last.ckpt").is_file()
    saved = yaml.safe_load((root / "config.yaml").read_text())
    assert saved["model"]["init_args"]["net"]["init_args"]["num_latents"] == 8
    best = root / "checkpoints" / "best.ckpt"
    assert best.is_file()
    wandb.finish()

    # The W&B offline run holds the logged metrics, and the keys docs/training.md promises.
    run = wandb_run_of(root, 1, "val/acc1")
    assert run["name"] == "tiny" and run["project"] == "perceiver-lit-tests" and run["group"] == "ci"
    logged = {k for row in run["history"] for k in row}
    assert {"val/acc1", "val/acc5", "val/loss", "train/loss_step", "model/params", "data/corrupt_samples"} <= logged, (
        logged
    )
    assert any(k.startswith("lr-AdamW") for k in logged), logged  # LearningRateMonitor, one key per param group
    assert_documented_fit_keys(run)
    val_rows = [row for row in run["history"] if "val/acc1" in row]
    assert len(val_rows) == 2 and all(0.0 <= row["val/acc1"] <= 1.0 for row in val_rows)

    test = run_cli(["test", "--config", cfg, "--ckpt_path", str(best)], cwd=tmp_path)
    wandb.finish()
    summary = next(cb for cb in test.trainer.callbacks if isinstance(cb, Summary))
    assert set(summary.last_test) >= {"test/acc1", "test/acc5", "test/loss"}
    assert 0.0 <= summary.last_test["test/acc1"] <= 1.0 and math.isfinite(summary.last_test["test/loss"])
    assert any("[perceiver-lit] test: " in r.getMessage() and "test/acc1=" in r.getMessage() for r in caplog.records)
    # the tested weights are the best checkpoint's
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(test.model.state_dict()["net.latents"], state["net.latents"])
    assert (root / "config_test.yaml").is_file()
    assert_per_class_table(wandb_run_of(root, 2, "test/acc1"), "test/per_class_accuracy", 10)

    # validate: the best checkpoint's weights on the val split give the score it was chosen by
    val = run_cli(["validate", "--config", cfg, "--ckpt_path", str(best)], cwd=tmp_path)
    wandb.finish()
    best_score = fit.trainer.checkpoint_callback.best_model_score.item()
    assert fit.trainer.checkpoint_callback.monitor == "val/acc1"
    assert val.trainer.callback_metrics["val/acc1"].item() == pytest.approx(best_score, abs=1e-6)
    assert val.trainer.global_step == 0 and (root / "config_validate.yaml").is_file()

    # predict: one exact pass over the test shards, one JSON line per sample with its key and top-5 classes
    run_cli(["predict", "--config", cfg, "--ckpt_path", str(best), "--trainer.logger", "false"], cwd=tmp_path)
    rows = [json.loads(line) for line in (root / "predictions-rank0.jsonl").read_text().splitlines()]
    assert len(rows) == fashion_shards.num_test
    assert len({r["key"] for r in rows}) == len(rows)  # every sample once
    assert all(len(r["classes"]) == 5 and 0 < sum(r["probs"]) <= 1 + 1e-5 for r in rows)
    assert all(r["probs"] == sorted(r["probs"], reverse=True) for r in rows)


def test_unknown_key_fails_before_training(fashion_shards, tmp_path, capsys):
    config = {"model": tiny_perceiver(), "data": fashion_data(fashion_shards)}
    config["data"]["init_args"]["batch_sise"] = 3
    cfg = write_config(tmp_path, config)
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", cfg, "--trainer.logger", "false"], cwd=tmp_path)
    assert "batch_sise" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_quickstart_script_is_valid_bash_and_uses_the_config():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "quickstart.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "perceiver-lit-shards" in text and "configs/quickstart.yaml" in text and " test " in text


# ------------------------------------------------------------------ shipped local configs, shrunk (test_configs)


@pytest.mark.parametrize(
    "config, task, message",
    [
        (
            "local/audio.yaml",
            "Classification",
            r"data \(AudioDataModule\) is multi-label \(data.init_args.multilabel: true\) "
            r"but the task is Classification",
        ),
        (
            "local/image.yaml",
            "MultilabelClassification",
            r"the task is MultilabelClassification but data \(FashionMNISTDataModule\) is single-label",
        ),
    ],
    ids=["single-label task on multi-label data", "multi-label task on single-label data"],
)
def test_task_that_does_not_fit_the_labels_fails_before_training(config, task, message, shards, tmp_path):
    """check_task_fits_data, through `perceiver-lit fit`: a single-label task on multi-label data and the
    reverse stop before any step (no checkpoint), with a message naming the task, the data and the fix."""
    smoke = smoke_overrides(CONFIGS / config, shards, tmp_path)
    smoke["model"]["class_path"] = f"perceiver_lit.tasks.{task}"
    override = write_config(tmp_path, smoke, "smoke.yaml")
    with pytest.raises(ValueError, match=message):
        run_cli(["fit", "--config", str(CONFIGS / config), "--config", override], cwd=tmp_path)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "config, table", [("local/audio.yaml", "test/per_class_ap"), ("local/text.yaml", "test/per_class_accuracy")]
)
def test_wandb_run_has_the_documented_keys_beyond_images(config, table, shards, tmp_path):
    """docs/training.md's dashboard on the runs the CLI made for audio (multi-label: AP table, attention curves
    over time) and text (bytes: attention curves), read back from the offline run files."""
    import wandb

    smoke = smoke_overrides(CONFIGS / config, shards, tmp_path)
    smoke["throughput"] = {"window": 1}  # 2 steps: the default window of 20 would log no perf/* here
    override = write_config(tmp_path, smoke, "smoke.yaml")
    args = ["--config", str(CONFIGS / config), "--config", override]
    fit = run_cli(["fit", *args], cwd=tmp_path)
    wandb.finish()
    root = tmp_path / "run"
    assert_documented_fit_keys(wandb_run_of(root, 1, "val/loss"))
    run_cli(["test", *args, "--ckpt_path", str(root / "checkpoints" / "last.ckpt")], cwd=tmp_path)
    wandb.finish()
    assert_per_class_table(wandb_run_of(root, 2, "test/loss"), table, fit.datamodule.num_classes)
