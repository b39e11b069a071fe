"""Multimodal autoencoding through the CLI, with the shipped recipe (configs/local/multimodal_autoencoding.yaml)
shrunk to tiny sizes on shards written by `perceiver-lit-shards synthetic audiovisual`:

- a few training steps, a validation with PSNR, acc1 and the baselines, W&B (offline) media of the
  reconstructions beside the originals; `predict` writes an mp4, a wav and a JSONL row per sample;
- the same under 2-process DDP (gloo, configs/trainer/ddp.yaml as shipped but for the accelerator), whose
  validation PSNR a single process reproduces from the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.training import read_wandb_run, run_cli, write_config
from tests.integration.test_cli import wandb_run_of
from tests.integration.test_configs import shrink
from tests.integration.test_ddp_data_cli import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "local" / "multimodal_autoencoding.yaml"
DDP = ROOT / "configs" / "trainer" / "ddp.yaml"
FRAMES, SIZE, RATE, FPS = 8, 16, 16000, 10.0  # the synthetic_shards fixture's clips, cropped to 16 x 16
SAMPLES = round(FRAMES / FPS * RATE)  # 12,800 audio samples per clip
METRICS = [
    "val/psnr_video",
    "val/psnr_audio",
    "val/acc1",
    "val/psnr_video_mean_frame",
    "val/psnr_video_mean_clip",
    "val/psnr_audio_mean_frame",
    "val/psnr_audio_mean_clip",
]


def overrides(tmp_path: Path, shards: tuple[str, str], run: Path, **trainer) -> str:
    net = shrink(yaml.safe_load(RECIPE.read_text())["model"]["init_args"]["net"])
    net["init_args"].update(decoder_output_channels=16, label_query_channels=16, num_self_attends=1)
    cfg = {
        "trainer": {
            "max_steps": 2,
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 2,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "max_time": None,
            "default_root_dir": str(run),
            **trainer,
        },
        "model": {"init_args": {"net": net, "train_video_queries": 64, "train_audio_queries": 8}},
        "data": data_overrides(shards),
    }
    return write_config(tmp_path, cfg, f"{run.name}.yaml")


def data_overrides(shards: tuple[str, str]) -> dict:
    """The recipe's data module on the synthetic_shards fixture's clips: (train, eval) shard patterns, 8 frames
    cropped to 16 x 16, batches of 2, 4 samples an epoch, no workers."""
    train_urls, eval_urls = shards
    return {
        "init_args": {
            "train_urls": train_urls,
            "val_urls": eval_urls,
            "test_urls": eval_urls,
            "num_frames": FRAMES,
            "crop_size": SIZE,
            "batch_size": 2,
            "samples_per_epoch": 4,
            "shuffle_buffer": 4,
            "num_workers": 0,
        }
    }


def test_fit_logs_psnr_baselines_and_media_then_predict_writes_media(synthetic_shards, tmp_path):
    import av
    import soundfile as sf

    run = tmp_path / "ae"
    cfg = overrides(tmp_path, synthetic_shards("audiovisual"), run)
    cli = run_cli(["fit", "--config", str(RECIPE), "--config", cfg])
    assert cli.trainer.global_step == 2
    # the label is an input modality: the CLI linked the data's shape plus {"label": (num_classes,)}
    assert cli.model.net.adapter.adapters["label"].num_classes == 10 and cli.model.num_classes == 10
    assert cli.model.video_mean.tolist() == [0.0, 0.0, 0.0]  # linked from data.init_args.mean
    logged = cli.trainer.callback_metrics
    for name in METRICS:
        assert name in logged and math.isfinite(float(logged[name])), name
    assert 0.0 <= float(logged["val/acc1"]) <= 1.0

    # W&B (offline): frames, an mp4 and the audio of the reconstructions beside the originals
    import wandb

    wandb.finish()
    run_data = wandb_run_of(run, 1, "val/psnr_video_mean_frame")  # once wandb has written all of it
    rows = run_data["history"]
    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    media = next(r for r in rows if "val/reconstruction/frames/_type" in r)  # the record's nested keys, joined
    assert media["val/reconstruction/frames/_type"] == "images/separated"
    assert media["val/reconstruction/frames/width"] == FRAMES * SIZE  # the frames side by side
    assert media["val/reconstruction/frames/height"] == 2 * SIZE  # original above
    assert media["val/reconstruction/video/_type"] == "videos" and media["val/reconstruction/video/count"] == 2
    assert media["val/reconstruction/audio/sampleRates"] == [RATE, RATE]
    assert media["val/reconstruction/audio_original/count"] == 2
    assert any(r.get("val/psnr_video_mean_frame") is not None for r in rows)
    media_dir = run_file.parent / "files" / "media"  # what `wandb sync` uploads
    assert len(list(media_dir.glob("videos/**/*.mp4"))) == 2 and len(list(media_dir.glob("audio/**/*.wav"))) == 4

    # predict: one mp4 (T frames of H x W) and one wav (S samples at the data's rate) per sample, and a JSONL row
    pred = run_cli(
        ["predict", "--config", str(RECIPE), "--config", cfg, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
    )
    lines = [json.loads(x) for x in (run / "predictions-rank0.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and pred.trainer.global_rank == 0
    for row in lines:
        assert row["classes"][0] in range(10) and row["label"] in range(10) and len(row["probs"]) == 5
        assert Path(row["video"]).parent == run / "predictions" and Path(row["video"]).suffix == ".mp4"
        with av.open(row["video"]) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)
        wave, rate = sf.read(row["audio"])
        assert rate == RATE and wave.shape == (SAMPLES,)


@pytest.mark.ddp
def test_two_process_ddp_fit_then_one_process_validates_the_same_psnr(synthetic_shards, tmp_path):
    run = tmp_path / "ddp"
    # every val sample once over the 2 ranks (exact eval: a shard per rank, so the 2 train shards of 4 clips
    # serve as val); fit's validation and a 1-process validate see the same 8 clips
    train_urls, _ = synthetic_shards("audiovisual")
    cfg = overrides(tmp_path, (train_urls, train_urls), run, accelerator="cpu", devices=2, limit_val_batches=None)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WANDB_MODE": "offline",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    for key in [k for k in env if k.startswith("SLURM_")]:
        del env[key]
    cmd = [
        str(Path(sys.executable).parent / "perceiver-lit"),
        "fit",
        "--config",
        str(RECIPE),
        "--config",
        str(DDP),
        "--config",
        cfg,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    rows = [r for r in read_wandb_run(run_file)["history"] if "val/psnr_video" in r]
    assert rows, "no validation row"
    fit_psnr = rows[-1]
    for name in METRICS:
        assert math.isfinite(float(fit_psnr[name])), name
    # the checkpoint holds the trained weights and the baselines' sums: validating it in one process gives the
    # PSNR the 2 ranks computed together (their metric states summed over ranks). bf16-mixed as ddp.yaml ships.
    one = run_cli(
        [
            "validate",
            "--config",
            str(RECIPE),
            "--config",
            cfg,
            "--trainer.devices",
            "1",
            "--trainer.precision",
            "bf16-mixed",
            "--trainer.default_root_dir",
            str(tmp_path / "one"),
            "--ckpt_path",
            str(run / "checkpoints" / "last.ckpt"),
        ]
    )
    got = one.trainer.callback_metrics
    for name in ("val/psnr_video", "val/psnr_audio", "val/acc1"):
        assert float(got[name]) == pytest.approx(float(fit_psnr[name]), abs=1e-3), name


@pytest.mark.ddp
def test_two_process_fsdp2_fit_writes_a_sharded_checkpoint_that_consolidates(synthetic_shards, tmp_path):
    import torch

    from perceiver_lit.distributed import consolidate_checkpoint

    run = tmp_path / "fsdp"
    train_urls, _ = synthetic_shards("audiovisual")
    cfg = overrides(tmp_path, (train_urls, train_urls), run, accelerator="cpu", devices=2, limit_val_batches=None)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "WANDB_MODE": "offline",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    for key in [k for k in env if k.startswith("SLURM_")]:
        del env[key]
    cmd = [
        str(Path(sys.executable).parent / "perceiver-lit"),
        "fit",
        "--config",
        str(RECIPE),
        "--config",
        str(ROOT / "configs" / "trainer" / "fsdp.yaml"),
        "--config",
        cfg,
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2
    full = torch.load(consolidate_checkpoint(last, tmp_path / "full.ckpt"), weights_only=False)
    assert full["global_step"] == 1  # 4 samples an epoch, 2 ranks x batch 2
    weights = full["state_dict"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert int(weights["train_means.video.count"]) > 0  # the baselines' sums travel with it
    (run_file,) = run.glob("wandb/offline-run-*/run-*.wandb")
    rows = [r for r in read_wandb_run(run_file)["history"] if "val/psnr_video" in r]
    assert rows and all(math.isfinite(float(rows[-1][name])) for name in METRICS)
