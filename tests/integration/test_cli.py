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
from tests.fixtures.training import fashion_data, read_wandb_run, run_cli, tiny_perceiver, write_config

pytestmark = pytest.mark.integration


def test_fit_then_test_with_wandb_offline(fashion_shards, tmp_path, monkeypatch, caplog):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    config = {
        "name": "tiny",
        "wandb": {"project": "perceiver-lit-tests", "group": "ci", "tags": ["test"]},
        "trainer": {"accelerator": "cpu", "max_epochs": 2, "limit_val_batches": 2, "log_every_n_steps": 1,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False},
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

    # The W&B offline run holds the logged metrics.
    for _ in range(40):  # wandb-core may create the run file a moment after finish() returns
        runs = sorted((root / "wandb").glob("offline-run-*/run-*.wandb"))
        if runs:
            break
        time.sleep(0.5)
    assert len(runs) == 1
    run = read_wandb_run(runs[0])
    for _ in range(20):  # the wandb service may still be flushing the file for a moment after finish()
        if "name" in run and sum("val/acc1" in row for row in run["history"]) >= 2:  # both epochs' rows
            break
        time.sleep(0.5)
        run = read_wandb_run(runs[0])
    assert run["name"] == "tiny" and run["project"] == "perceiver-lit-tests" and run["group"] == "ci"
    logged = {k for row in run["history"] for k in row}
    assert {"val/acc1", "val/acc5", "val/loss", "train/loss_step", "model/params", "data/corrupt_samples"} <= logged, logged
    assert any(k.startswith("lr-AdamW") for k in logged), logged  # LearningRateMonitor, one key per param group
    val_rows = [row for row in run["history"] if "val/acc1" in row]
    assert len(val_rows) == 2 and all(0.0 <= row["val/acc1"] <= 1.0 for row in val_rows)

    test = run_cli(["test", "--config", cfg, "--ckpt_path", str(best)], cwd=tmp_path)
    wandb.finish()
    summary = next(cb for cb in test.trainer.callbacks if isinstance(cb, Summary))
    assert set(summary.last_test) >= {"test/acc1", "test/acc5", "test/loss"}
    assert 0.0 <= summary.last_test["test/acc1"] <= 1.0 and math.isfinite(summary.last_test["test/loss"])
    assert any("[perceiver-lit] test: " in r.getMessage() and "test/acc1=" in r.getMessage() for r in caplog.records)
    # the tested weights are the best checkpoint's
    state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(test.model.state_dict()["net.latents"], state["net.latents"])
    assert (root / "config_test.yaml").is_file()

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
