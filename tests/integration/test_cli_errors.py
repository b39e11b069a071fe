"""A config error inside a union-typed argument (model, data, the net, its adapter) reaches the user as one line
naming the field and the cause, at parse and at instantiation, through the real `perceiver-lit` command; and the
audio+video example of docs/media.md runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from datamodules.shards.cli import main as shards_main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
AV = str(ROOT / "configs" / "local" / "audio_video.yaml")


def perceiver_lit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "WANDB_MODE": "offline"}
    script = Path(sys.executable).parent / "perceiver-lit"  # the console script users run (prog: perceiver-lit)
    return subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


def test_a_constructor_error_inside_a_union_is_one_line(tmp_path):
    # The settings docs/media.md used to give: a 28-pixel crop cannot tile into 8-pixel patches.
    proc = perceiver_lit(
        "fit",
        "--config",
        AV,
        "--data.init_args.num_frames=8",
        "--data.init_args.frame_stride=2",
        "--data.init_args.crop_size=28",
        "--data.init_args.short_side=32",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [
        "perceiver-lit: error: model.init_args.net.init_args.adapter: VideoAdapter: input_shape (8, 28, 28, 3) not "
        "divisible by patch_size (2, 8, 8)"
    ], proc.stderr
    assert "Union" not in proc.stderr and len(proc.stderr.splitlines()) <= 3  # Lightning's "Seed set to 0" may come


def test_a_bad_value_inside_a_union_at_parse_is_one_line(tmp_path):
    proc = perceiver_lit(
        "fit",
        "--config",
        AV,
        "--model.init_args.net.init_args.adapter.init_args.min_padding_size=x",
        "--print_config",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "perceiver-lit fit: error: model.init_args.net.init_args.adapter.init_args."
        "min_padding_size: Expected a <class 'int'>. Got value: x"
    )


def test_docs_audio_video_example_runs(tmp_path):
    """docs/media.md: write synthetic A+V shards with its command (fewer clips), read them with its settings."""
    doc = (ROOT / "docs" / "media.md").read_text()
    (command,) = re.findall(r"^perceiver-lit-shards (synthetic audiovisual .*)$", doc, flags=re.M)
    args = command.split()
    args[args.index("--num-samples") + 1] = "6"
    args[args.index("--out") + 1] = str(tmp_path / "synth-av")
    assert shards_main([*args, "--engine", "tones", "--maxcount", "4", "--no-progress"]) == 0
    settings = re.search(r"A synthetic A\+V config then reads them with, e\.g\., `([^`]+)`", doc.replace("\n", " "))
    data = yaml.safe_load("{" + settings[1] + "}")
    assert data["fps"] == int(args[args.index("--fps") + 1])  # the rate the clips were written at
    overrides = [f"--data.init_args.{k}={v}" for k, v in data.items()]
    shards = tmp_path / "synth-av"
    proc = perceiver_lit(
        "fit",
        "--config",
        AV,
        *overrides,
        f"--data.init_args.train_urls={shards}/train-000000.tar",
        f"--data.init_args.val_urls={shards}/val-000000.tar",
        "--data.init_args.batch_size=2",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = yaml.safe_load((tmp_path / "runs" / "local-audio-video" / "config.yaml").read_text())
    assert {k: saved["data"]["init_args"][k] for k in data} == data  # the docs' settings, as given
    assert (tmp_path / "runs" / "local-audio-video" / "checkpoints" / "last.ckpt").is_file()  # a step was trained
