"""A command whose optional package is not installed stops with one line naming the pip extra, exit status 1, no
traceback: run as the user runs it (the console script, a subprocess) with the package hidden by a sitecustomize
(None in sys.modules, and no distribution metadata)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# As if never installed: `import x` fails and the distribution's metadata is gone too (libraries such as
# torchmetrics decide from the metadata whether to import x).
HIDE = """import importlib.metadata as md, os, sys
hidden = {n for n in os.environ.get("HIDE_MODULES", "").split(",") if n}
for name in hidden:
    sys.modules[name] = None
_from_name = md.Distribution.from_name.__func__
def from_name(cls, name):
    if name in hidden:
        raise md.PackageNotFoundError(name)
    return _from_name(cls, name)
md.Distribution.from_name = classmethod(from_name)
"""


def run_without(module: str, command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE)
    env = {
        **os.environ,
        "HIDE_MODULES": module,
        "WANDB_MODE": "offline",
        "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _sweep_dir(tmp_path: Path) -> str:
    """Two finished trials, as the runner leaves them, so `report` gets as far as its plots."""
    d = tmp_path / "sw"
    for i in range(2):
        (d / f"trial-{i}").mkdir(parents=True)
        (d / f"trial-{i}" / "trial.json").write_text(
            json.dumps({"index": i, "params": {"x": i}, "command": ["x"], "cwd": "."})
        )
        (d / f"trial-{i}" / "metrics.json").write_text(json.dumps({"metrics": {"val/acc": 0.5 + i / 10}}))
        (d / f"trial-{i}" / "done").write_text("{}")
    return str(d)


CASES = {
    "synthetic pointcloud without trimesh": (
        "trimesh",
        "media",
        lambda t: [
            str(BIN / "perceiver-lit-shards"),
            "synthetic",
            "pointcloud",
            "--out",
            str(t / "o"),
            "--num-samples",
            "2",
        ],
    ),
    "synthetic audio without soundfile": (
        "soundfile",
        "media",
        lambda t: [
            str(BIN / "perceiver-lit-shards"),
            "synthetic",
            "audio",
            "--out",
            str(t / "o"),
            "--num-samples",
            "2",
            "--engine",
            "tones",
        ],
    ),
    "synthetic video without av": (
        "av",
        "media",
        lambda t: [
            str(BIN / "perceiver-lit-shards"),
            "synthetic",
            "video",
            "--out",
            str(t / "o"),
            "--num-samples",
            "2",
        ],
    ),
    "sweep report without matplotlib": (
        "matplotlib",
        "sweep",
        lambda t: [str(BIN / "perceiver-lit-sweep"), "report", _sweep_dir(t)],
    ),
    "convert without transformers": (
        "transformers",
        "hf",
        lambda t: [str(BIN / "perceiver-lit-convert"), "--hf", str(t), "--out", str(t / "x.ckpt")],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_missing_optional_package_is_one_line_naming_the_extra(case, tmp_path):
    module, extra, command = CASES[case]
    proc = run_without(module, command(tmp_path), tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"needs the optional package `{module}`" in lines[0]
    assert f"pip install 'perceiver-lit[{extra}]'" in lines[0]


@pytest.mark.parametrize(
    "hidden, config, expected",
    [
        (
            "av,decord",
            "audio_video.yaml",
            "data: Decoding mp4 needs decord or PyAV: `pip install 'perceiver-lit[media]'`",
        ),
        (
            "soundfile",
            "audio.yaml",
            "data: datamodules.AudioDataModule needs the optional package `soundfile`, which is "
            "not installed: pip install 'perceiver-lit[media]'",
        ),
    ],
    ids=["av+decord", "soundfile"],
)
def test_perceiver_lit_without_a_decoder_is_one_line(hidden, config, expected, tmp_path):
    """A media data module that could decode nothing says so when it is built (not as every sample skipped as corrupt),
    and the CLI shows that one line, naming the `data` field, instead of jsonargparse's union dump."""
    proc = run_without(
        hidden, [str(BIN / "perceiver-lit"), "fit", "--config", str(ROOT / "configs" / "local" / config)], tmp_path
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith(f"perceiver-lit: error: {expected}"), errors[0]
