"""A shipped local sweep, run for real at a tiny budget: `perceiver-lit-sweep run SPEC -- ARGS` (ARGS reach every
trial), each trial a real `perceiver-lit fit` whose W&B run is named after the trial and grouped by the sweep, then
`perceiver-lit-sweep report` (and its --out / --metric options) on what the trials wrote."""

import csv
import glob
import json
import os
import time

import pytest
import yaml

from perceiver_lit.sweeps.cli import main
from tests.fixtures.training import read_wandb_records, read_wandb_run

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_local_sweep_with_extra_arguments_then_report(fashion_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the spec names configs/quickstart.yaml relative to the repo, as a user runs it
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep_dir = tmp_path / "sw"
    extra = [
        f"--data.init_args.train_urls={fashion_shards.train_urls}",
        f"--data.init_args.val_urls={fashion_shards.test_urls.replace('{000000..000003}', '000000')}",
        "--data.init_args.samples_per_epoch=64",
        "--data.init_args.batch_size=32",
        "--trainer.max_epochs=1",
        "--trainer.max_steps=2",  # the spec says 2 epochs of 15,360 samples
        "--trainer.log_every_n_steps=1",
    ]
    rc = main(["run", "configs/sweeps/local_num_latents.yaml", "--dir", str(sweep_dir), "--trials", "2", "--", *extra])
    out = capsys.readouterr().out
    assert rc == 0, out + "".join((sweep_dir / f"trial-{i}" / "log.txt").read_text()[-3000:] for i in range(2))
    assert json.loads((sweep_dir / "plan.json").read_text())["extra_args"] == extra

    for i, latents in enumerate([8, 16]):
        tdir = sweep_dir / f"trial-{i}"
        config = yaml.safe_load((tdir / "config.yaml").read_text())
        assert config["trainer"]["max_steps"] == 2 and config["data"]["init_args"]["samples_per_epoch"] == 64
        assert config["model"]["init_args"]["net"]["init_args"]["num_latents"] == latents
        assert json.loads((tdir / "metrics.json").read_text())["global_step"] == 2
        (run_file,) = glob.glob(str(tdir / "wandb" / "offline-run-*" / "run-*.wandb"))
        for _ in range(120):  # wandb-core may still be writing the file after the trial exits: wait for its end
            if any(r.WhichOneof("record_type") == "exit" for r in read_wandb_records(run_file)):
                break
            time.sleep(0.5)
        run = read_wandb_run(run_file)
        assert (run["name"], run["group"]) == (f"local-num-latents-trial-{i}", "local-num-latents")
        keys = {k for row in run["history"] for k in row}
        # docs/sweeps.md's table: the loss is logged per step and per epoch, never as a bare train/loss
        assert {"train/loss_step", "train/loss_epoch", "train/acc1", "val/acc1"} <= keys and "train/loss" not in keys

    # report, with its options: another output folder, another metric.
    assert main(["report", str(sweep_dir), "--out", str(tmp_path / "rep"), "--metric", "val/loss"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "rep" / "report.csv")))
    assert [(r["trial"], r["status"], r["model.init_args.net.init_args.num_latents"]) for r in rows] == [
        ("0", "done", "8"),
        ("1", "done", "16"),
    ]
    assert all(0 < float(r["val/loss"]) < 10 and 0 <= float(r["val/acc1"]) <= 1 for r in rows)
    best = min(rows, key=lambda r: float(r["val/loss"]))["trial"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"Best (minimize `val/loss`): trial {best}," in md  # a loss is minimized, whatever the spec's goal
    assert "| trial | status | num_latents | val/loss |" in md
    plot = tmp_path / "rep" / "val_loss_vs_num_latents.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (sweep_dir / "report.csv").exists()  # --out: nothing written beside the trials
    # Default: the spec's metric (val/acc1, maximize), into the sweep dir.
    assert main(["report", str(sweep_dir)]) == 0
    rows = list(csv.DictReader(open(sweep_dir / "report.csv")))
    top = max(rows, key=lambda r: float(r["val/acc1"]))
    assert f"Best (maximize `val/acc1`): trial {top['trial']}," in (sweep_dir / "report.md").read_text()
    assert (sweep_dir / "val_acc1_vs_num_latents.png").exists()
    capsys.readouterr()
    assert main(["report", str(sweep_dir), "--metric", "val/acc"]) == 2
    assert "metric 'val/acc' was logged by no trial" in capsys.readouterr().err
