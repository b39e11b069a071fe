"""`bash scripts/quickstart.sh`, the README's headline, run for real at a tiny budget: the script writes a few
Fashion-MNIST shards with perceiver-lit-shards, fits configs/quickstart.yaml a few hundred steps, and prints the
test accuracy of the model that fit just trained (never an older run's best.ckpt left in the run directory)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures.data import FASHION_DIR

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_script_trains_and_tests_the_model_it_trained(tmp_path):
    if not os.path.isdir(FASHION_DIR):
        pytest.skip(f"{FASHION_DIR} missing (Debian package dataset-fashion-mnist)")
    data, run = tmp_path / "fashion-mnist", tmp_path / "run"
    stale = run / "checkpoints" / "best.ckpt"  # an earlier run's best.ckpt: must not be what gets tested
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's checkpoint")
    os.utime(stale, (1, 1))
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "DATA_DIR": str(data),
        "RUN_DIR": str(run),
        "PYTHONPATH": str(ROOT),
        "WANDB_MODE": "offline",
        # a few shards: 950 train (4 shards), 50 val, 1,000 test (4 shards)
        "SHARDS_ARGS": "--maxcount 250 --val-fraction 0.05 --limit 1000 --no-progress",
    }
    # The budget: 200 steps of the shipped config (~10 s on a quiet 2-core CPU); epochs of 500 steps (resampled
    # from the 4 train shards), so max_steps ends the fit before any validation and no new best.ckpt is written.
    budget = [
        "--trainer.max_steps",
        "200",
        "--data.init_args.samples_per_epoch",
        "32000",
        "--trainer.enable_progress_bar",
        "false",
    ]
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "quickstart.sh"), *budget],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:  # timed out: stop the script and the fit or test it started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-6000:]
    assert len(sorted(data.glob("train-*.tar"))) == 4 and len(sorted(data.glob("test-*.tar"))) == 4
    last = run / "checkpoints" / "last.ckpt"
    assert f"3/3 perceiver-lit test on the test images ({last})" in out, out[-4000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 200
    (tested,) = re.findall(r"test/acc1=([0-9.]+)", (run / "test.log").read_text())
    printed = re.search(r"done: test accuracy ([0-9.]+) \| fit \d+ s, test \d+ s, total \d+ s", out)
    assert printed and printed.group(1) == tested, out[-2000:]
    assert float(tested) > 0.5, tested  # 200 steps of the quickstart model learn far past chance (0.1)
