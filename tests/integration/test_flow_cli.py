"""Optical flow through the CLI, as a user runs it (issue 17): `perceiver-lit fit --config configs/local/flow.yaml`
on shards from `perceiver-lit-shards synthetic flow` (a few steps, tiny net), with the W&B offline run holding
val/epe, val/fl_all, the zero-flow baseline and the colour-wheel panels; `predict` writes .npy + .png per key; and
the same recipe under configs/trainer/ddp.yaml with 2 gloo ranks."""

from __future__ import annotations

import copy
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from perceiver_lit.flow_viz import flow_to_color
from tests.fixtures.training import run_cli, write_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG, DDP = ROOT / "configs" / "local" / "flow.yaml", ROOT / "configs" / "trainer" / "ddp.yaml"
SIZE = 16


@pytest.fixture(scope="module")
def flow_shards(tmp_path_factory) -> tuple[str, str]:
    """Train / val shards of 16 x 16 synthetic pairs, written by the real shard tool."""
    from datamodules.shards.cli import main as shards_main

    out = tmp_path_factory.mktemp("flow-shards")
    shards_main(
        [
            "synthetic",
            "flow",
            "--out",
            str(out),
            "--num-samples",
            "24",
            "--val-fraction",
            "0.34",
            "--flow-size",
            str(SIZE),
            "--maxcount",
            "4",
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    train = sorted(glob.glob(str(out / "train-*.tar")))
    val = sorted(glob.glob(str(out / "val-*.tar")))
    return "::".join(train), "::".join(val)


def tiny_recipe(shards: tuple[str, str], run: Path, **trainer) -> dict:
    """The shipped recipe's net at tiny widths, on the test shards; the run's length from `trainer`."""
    net = copy.deepcopy(yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["net"])
    net["init_args"].update(num_latents=8, latent_dim=16, num_self_attends=1, num_self_attention_heads=2)
    net["init_args"]["adapter"]["init_args"].update(num_channels=8, num_frequency_bands=2)
    return {
        "trainer": {
            "max_steps": 3,
            "max_epochs": 1,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run),
            **trainer,
        },
        "model": {"init_args": {"net": net, "num_images": 2}},
        "data": {
            "init_args": {
                "train_urls": shards[0],
                "val_urls": shards[1],
                "test_urls": shards[1],
                "predict_urls": shards[1],
                "crop_size": SIZE,
                "batch_size": 4,
                "samples_per_epoch": 12,
                "shuffle_buffer": 8,
                "num_workers": 0,
            }
        },
    }


def wandb_history(run: Path) -> list[dict]:
    from tests.integration.test_wandb_dashboards import wandb_history as history

    (offline,) = glob.glob(str(run / "wandb" / "offline-run-*"))
    return history(offline)


def test_fit_logs_epe_fl_and_flow_images_then_predict_writes_npy_and_png(flow_shards, tmp_path):
    run = tmp_path / "run"
    cfg = write_config(tmp_path, tiny_recipe(flow_shards, run))
    cli = run_cli(["fit", "--config", str(CONFIG), "--config", cfg], cwd=tmp_path)
    assert cli.trainer.global_step == 3
    # the data module's input_shape reached the adapter through the CLI's link
    assert cli.model.net.adapter.input_shape == (2, SIZE, SIZE, 3) == cli.datamodule.input_shape
    metrics = cli.trainer.callback_metrics
    for name in ("val/epe", "val/fl_all", "val/epe_zero_flow", "train/loss_epoch"):
        assert np.isfinite(float(metrics[name])), name
    assert 0.0 <= float(metrics["val/fl_all"]) <= 1.0 and float(metrics["val/epe_zero_flow"]) > 0.1
    cli.trainer.logger.experiment.finish()
    rows = wandb_history(run)
    assert any("val/epe" in r for r in rows) and any("val/epe_zero_flow" in r for r in rows)
    (files,) = glob.glob(str(run / "wandb" / "offline-run-*" / "files"))
    panels = sorted(glob.glob(os.path.join(files, "media", "images", "val", "flow_*.png")))
    assert len(panels) == 2  # num_images 2, one validation
    with Image.open(panels[0]) as im:
        assert im.width > 3.5 * im.height >= 128  # frame 1 | frame 2 | truth | prediction, enlarged
    assert (run / "checkpoints" / "best.ckpt").is_file()

    out = tmp_path / "predict"
    cli = run_cli(
        [
            "predict",
            "--config",
            str(CONFIG),
            "--config",
            cfg,
            "--ckpt_path",
            str(run / "checkpoints" / "best.ckpt"),
            "--trainer.default_root_dir",
            str(out),
        ],
        cwd=tmp_path,
    )
    lines = [json.loads(line) for line in (out / "predictions-rank0.jsonl").read_text().splitlines()]
    assert len(lines) == 8 and len({r["key"] for r in lines}) == 8  # every val pair once
    for row in lines:
        flow = np.load(out / row["flow"])
        assert flow.shape == (SIZE, SIZE, 2) and flow.dtype == np.float32
        np.testing.assert_array_equal(np.asarray(Image.open(out / row["image"])), flow_to_color(flow))
        assert row["epe"] >= 0  # the val pairs have their true flow


@pytest.mark.ddp
def test_flow_recipe_under_ddp_on_two_cpu_ranks(flow_shards, tmp_path):
    """configs/local/flow.yaml + configs/trainer/ddp.yaml, only the accelerator and devices changed for CPU (gloo),
    as tests/integration/test_ddp_data_cli.py runs the image recipe."""
    from tests.integration.test_ddp import free_port

    run = tmp_path / "run"
    recipe = tiny_recipe(flow_shards, run, accelerator="cpu", devices=2)
    recipe["data"]["init_args"]["samples_per_epoch"] = 24
    cfg = write_config(tmp_path, recipe)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WANDB_MODE": "offline",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    for key in [k for k in env if k.startswith("SLURM_") or k == "WANDB_SERVICE"]:
        del env[key]
    cmd = [
        str(Path(sys.executable).parent / "perceiver-lit"),
        "fit",
        "--config",
        str(CONFIG),
        "--config",
        str(DDP),
        "--config",
        cfg,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    saved = yaml.safe_load((run / "config.yaml").read_text())["trainer"]
    assert saved["devices"] == 2 and saved["strategy"]["class_path"].endswith("DDPStrategy")
    assert (run / "checkpoints" / "last.ckpt").is_file()
    import torch

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3


def test_converted_official_architecture_predicts_a_frame_pair(flow_shards, tmp_path):
    """A random-weight HF PerceiverForOpticalFlow (the official architecture, small widths) saved with
    save_pretrained -> perceiver-lit-convert -> `perceiver-lit predict --config configs/pretrained/optical_flow.yaml`
    on one frame pair without flow (perceiver-lit-shards flow list): the .npy holds HF's own flow x 20 and the PNG
    its colour wheel."""
    import torch

    from datamodules.shards.cli import main as shards_main
    from perceiver_lit.convert import main as convert_main
    from perceiver_lit.models import extract_patches
    from tests.unit.test_convert_dense import hf_flow

    hf = hf_flow(train_size=[SIZE, SIZE]).eval()
    hf.save_pretrained(tmp_path / "hf")
    convert_main(["--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "flow.pt")])
    data = Path(flow_shards[0].split("::")[0]).parent / "files" / "flow" / "data"
    (tmp_path / "pairs.txt").write_text(f"{data / '00001_img1.ppm'} {data / '00001_img2.ppm'}\n")
    shards_main(
        [
            "flow",
            "list",
            str(tmp_path / "pairs.txt"),
            "--out",
            str(tmp_path / "pairs"),
            "--prefix",
            "test",
            "--no-progress",
        ]
    )
    (shard,) = glob.glob(str(tmp_path / "pairs" / "test-*.tar"))
    out = tmp_path / "run"
    run_cli(
        [
            "predict",
            "--config",
            str(ROOT / "configs" / "pretrained" / "optical_flow.yaml"),
            "--model.init_args.net.init_args.path",
            str(tmp_path / "flow.pt"),
            "--data.init_args.predict_urls",
            shard,
            "--data.init_args.crop_size",
            str(SIZE),
            "--data.init_args.num_workers",
            "0",
            "--trainer.default_root_dir",
            str(out),
            "--trainer.enable_progress_bar",
            "false",
        ],
        cwd=tmp_path,
    )
    (row,) = [json.loads(line) for line in (out / "predictions-rank0.jsonl").read_text().splitlines()]
    assert "epe" not in row  # no true flow for this pair
    flow = np.load(out / row["flow"])
    frames = np.stack([np.asarray(Image.open(data / f"00001_img{k}.ppm")) for k in (1, 2)])
    x = torch.from_numpy(frames).float()[None] / 127.5 - 1  # (1, 2, H, W, 3) in [-1, 1]
    with torch.no_grad():
        expect = hf(inputs=extract_patches(x)).logits[0].numpy() * 20.0
    np.testing.assert_allclose(flow, expect, atol=1e-4, rtol=1e-4)
    png = np.asarray(Image.open(out / row["image"]))
    assert png.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(png, flow_to_color(flow))
