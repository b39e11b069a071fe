"""Preemption outside Slurm: a real `perceiver-lit fit` subprocess, signalled.

SIGTERM, then (after a resume) SIGINT, each finish the running step and save `last.ckpt` (PreemptionCheckpoint);
`fit --ckpt_path last` resumes at exactly that step with the optimizer, LR schedule and RNG states of the checkpoint
(the optimizer's and scheduler's own step counters keep counting instead of starting over). Finishing a resumed run
is covered by the Slurm preemption test.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.slurm import QUICKSTART, REPO, csv_steps, processes_with_env, tiny_fit_config

CLI = str(REPO / ".venv" / "bin" / "perceiver-lit")


def _fit(run: Path, config: Path, *extra: str, marker: str) -> subprocess.Popen:
    cli = CLI if os.path.exists(CLI) else "perceiver-lit"
    cmd = [cli, "fit", "--config", str(QUICKSTART), "--config", str(config),
           "--trainer.default_root_dir", str(run), *extra]  # PreemptionCheckpoint is a CLI default
    env = {**os.environ, "PLIT_TEST_RUN": marker, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=run, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _signal_when_training(proc: subprocess.Popen, ckpt: Path, sig: int, timeout: float = 90) -> str:
    """Wait until a periodic last.ckpt appears (training is under way), send `sig`, return the output."""
    deadline = time.monotonic() + timeout
    mtime = ckpt.stat().st_mtime if ckpt.exists() else None
    while not (ckpt.exists() and ckpt.stat().st_mtime != mtime):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"fit never reached its first checkpoint:\n{proc.communicate()[0][-4000:]}")
        time.sleep(0.1)
    proc.send_signal(sig)
    out = proc.communicate(timeout=60)[0]
    return out


def _preempted_step(out: str) -> int:
    m = re.search(r"Preempted at global step (\d+): saved (\S+)", out)
    assert m, f"no preemption checkpoint was saved:\n{out[-4000:]}"
    return int(m.group(1))


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _adam_step(ckpt: dict) -> int:
    return int(next(iter(ckpt["optimizer_states"][0]["state"].values()))["step"])


@pytest.mark.integration
def test_sigterm_and_sigint_save_and_resume_at_the_same_step(tmp_path: Path, fashion_shards) -> None:
    run = tmp_path / "run"
    run.mkdir()
    config = tiny_fit_config(tmp_path / "tiny.yaml", fashion_shards, max_steps=100_000, log_dir=run)
    ckpt = run / "checkpoints" / "last.ckpt"
    marker = uuid.uuid4().hex
    periodic = ["--checkpoint.every_n_train_steps", "3"]

    # 1. SIGTERM mid-training: the step finishes, last.ckpt is written at that step, and the process exits with
    #    128 + SIGTERM, so a script (set -e, a sweep trial) does not take the cut run for a finished one.
    proc = _fit(run, config, *periodic, marker=marker)
    out = _signal_when_training(proc, ckpt, signal.SIGTERM)
    n1 = _preempted_step(out)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, out[-2000:])
    c1 = _load(ckpt)
    assert c1["global_step"] == n1 >= 3
    assert _adam_step(c1) == n1  # optimizer state saved at the same step
    assert c1["lr_schedulers"][0]["last_epoch"] == n1
    rng = c1["callbacks"]["PreemptionCheckpoint"]["rng"]
    assert len(rng) == 1 and {"torch", "numpy", "python"} <= rng[0].keys()
    assert not list(run.glob("checkpoints/*.partial")), "the atomic save left its temp file"

    # 2. Resume from `last`, then SIGINT (Ctrl-C): same graceful path.
    proc = _fit(run, config, *periodic, "--ckpt_path", "last", marker=marker)
    out = _signal_when_training(proc, ckpt, signal.SIGINT)
    assert f"Restored all states from the checkpoint at {ckpt}" in out, out[-4000:]
    n2 = _preempted_step(out)
    assert proc.returncode == 128 + signal.SIGINT, (proc.returncode, out[-2000:])  # 130, as a shell reports Ctrl-C
    c2 = _load(ckpt)
    assert c2["global_step"] == n2 > n1
    assert _adam_step(c2) == n2 and c2["lr_schedulers"][0]["last_epoch"] == n2  # counters continued, not restarted

    # The logged train steps of the three runs join up: none repeated from zero, none missing.
    runs = list(csv_steps(run).values())
    assert len(runs) == 2 and runs[1][0] == n1, runs
    assert sorted(s for r in runs for s in r) == list(range(n2)), runs
    assert not processes_with_env("PLIT_TEST_RUN", marker), "a fit process was left behind"


def test_rng_state_round_trip() -> None:
    """The callback's state holds torch/numpy/python RNG states and puts them back exactly."""
    from perceiver_lit.callbacks.preemption import PreemptionCheckpoint

    cb = PreemptionCheckpoint()
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = cb.state_dict()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    cb.load_state_dict(torch.load(_roundtrip(state), weights_only=True))  # survives a weights-only load
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def _roundtrip(obj: object) -> object:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf
