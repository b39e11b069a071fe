"""Preemption outside Slurm: a real `perceiver-lit fit` subprocess, signalled.

SIGTERM, then (after a resume) SIGINT, each finish the running step, save `last.ckpt` (PreemptionCheckpoint) and
finish the W&B run; `fit --ckpt_path last` resumes at exactly that step, in the same W&B run, with the optimizer, LR
schedule and RNG states of the checkpoint (the optimizer's and scheduler's own step counters keep counting instead
of starting over). A resume inside the LR warm-up has the uninterrupted run's LR and RNG draws at every later step.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.slurm import QUICKSTART, REPO, processes_with_env, tiny_fit_config, wandb_runs

CLI = str(REPO / ".venv" / "bin" / "perceiver-lit")


def _fit(run: Path, config: Path, *extra: str, marker: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    # the repo's venv, else this interpreter's (a worktree without its own .venv), else PATH
    beside = Path(sys.executable).parent / "perceiver-lit"
    cli = CLI if os.path.exists(CLI) else str(beside) if beside.exists() else "perceiver-lit"
    cmd = [
        cli,
        "fit",
        "--config",
        str(QUICKSTART),
        "--config",
        str(config),
        "--trainer.default_root_dir",
        str(run),
        *extra,
    ]  # PreemptionCheckpoint is a CLI default
    # PYTHONPATH: the repo, for the tests' probe callback (tests.fixtures.slurm.RngProbe)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **(env or {}), "PLIT_TEST_RUN": marker, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
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
    config = tiny_fit_config(
        tmp_path / "tiny.yaml", fashion_shards, max_steps=100_000, log_dir=run, logger="wandb"
    )  # the CLI's own W&B logger (offline): finished on each signal
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

    # One W&B run for both processes, finished by each signal (exit records 143, 130); the logged train steps join
    # up: none repeated from zero, none missing.
    (folders,) = wandb_runs(run).values()
    assert [f["exit"] for f in folders] == [143, 130] and {f["job_type"] for f in folders} == {"fit"}, folders
    first, second = (f["steps"] for f in folders)
    assert first == list(range(n1)) and second == list(range(n1, n2)), (n1, n2, first, second)
    assert "Traceback" not in out
    assert not processes_with_env("PLIT_TEST_RUN", marker), "a fit process was left behind"


@pytest.mark.integration
def test_sigterm_at_a_validation_step_resumes_with_every_wandb_row_once(tmp_path: Path, fashion_shards) -> None:
    """SIGTERM lands in step 8, where validation is due (every 4 steps) and takes one batch, so it finishes before
    Lightning stops the fit. last.ckpt is saved at the end of the step, where Lightning's resume counts it once:
    saved after the step's validation and bookkeeping instead, it was resumed with step 8 counted twice, and every
    W&B row of the resumed run carried the next step's number (rows 9..max_steps, none for step 8)."""
    run = tmp_path / "run"
    run.mkdir()
    max_steps, cut = 12, 8
    config = tiny_fit_config(tmp_path / "tiny.yaml", fashion_shards, max_steps=max_steps, log_dir=run, logger="wandb")
    args = [
        "--trainer.callbacks+=tests.fixtures.slurm.SigtermAt",
        "--trainer.val_check_interval",
        "4",
        "--trainer.limit_val_batches",
        "1",
    ]
    marker = uuid.uuid4().hex
    proc = _fit(run, config, *args, marker=marker, env={"PLIT_SIGTERM_AT": str(cut)})
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 128 + signal.SIGTERM and _preempted_step(out) == cut, out[-4000:]
    proc = _fit(run, config, *args, "--ckpt_path", "last", marker=marker)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    assert f"Restored all states from the checkpoint at {run / 'checkpoints' / 'last.ckpt'}" in out, out[-4000:]

    (folders,) = wandb_runs(run).values()
    assert [f["exit"] for f in folders] == [143, 0], folders
    assert [f["steps"] for f in folders] == [list(range(cut)), list(range(cut, max_steps))], folders
    assert not processes_with_env("PLIT_TEST_RUN", marker), "a fit process was left behind"


def _csv_rows(run: Path) -> list[dict[str, dict[int, float]]]:
    """Per CSV version folder (one per process): {column: {step: value}} for the lr and loss columns."""
    import csv

    out = []
    for f in sorted(run.glob("csv/version_*/metrics.csv")):
        cols: dict[str, dict[int, float]] = {}
        with open(f) as fh:
            for row in csv.DictReader(fh):
                for k, v in row.items():
                    if v and (k.startswith("lr-") or k == "train/loss_step"):
                        cols.setdefault(k, {})[int(row["step"])] = float(v)
        out.append(cols)
    return out


def _probe(run: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (run / "rng_probe.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


@pytest.mark.integration
def test_resume_across_the_warmup_continues_lr_and_rng(tmp_path: Path, fashion_shards) -> None:
    """SIGTERM during the LR warm-up, then `--ckpt_path last`: every later step has the learning rate of the
    uninterrupted run, and the global RNGs draw the same numbers as the uninterrupted run at the same steps."""
    steps_per_epoch = 400 // 16
    max_steps = steps_per_epoch + 5  # a warm-up of one epoch (quickstart ships 0.05), then the cosine
    config = tiny_fit_config(tmp_path / "tiny.yaml", fashion_shards, max_steps=max_steps, log_dir=".", warmup_epochs=1)
    # Checkpoint defers periodic saves until its monitor (val/acc1) exists: validate early, so that the first
    # last.ckpt (our cue to signal) comes inside the warm-up.
    probe = [
        "--trainer.callbacks+=tests.fixtures.slurm.RngProbe",
        "--checkpoint.every_n_train_steps",
        "2",
        "--trainer.val_check_interval",
        "4",
    ]
    marker = uuid.uuid4().hex
    ref, cut = tmp_path / "reference", tmp_path / "cut"
    for run in (ref, cut):
        run.mkdir()
        (run / "tiny.yaml").write_text(config.read_text().replace("save_dir: .", f"save_dir: {run}"))

    proc = _fit(ref, ref / "tiny.yaml", *probe, marker=marker)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-4000:]
    proc = _fit(cut, cut / "tiny.yaml", *probe, marker=marker)
    out = _signal_when_training(proc, cut / "checkpoints" / "last.ckpt", signal.SIGTERM)
    n = _preempted_step(out)
    assert n < steps_per_epoch, f"the signal should land in the warm-up (step {n})"
    proc = _fit(cut, cut / "tiny.yaml", *probe, "--ckpt_path", "last", marker=marker)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and f"Restored all states from the checkpoint at {cut}" in out, out[-4000:]

    lr_key = min(k for k in _csv_rows(ref)[0] if k.startswith("lr-"))  # the first parameter group's
    lr_ref, lr_after = _csv_rows(ref)[0][lr_key], _csv_rows(cut)[-1][lr_key]
    assert sorted(lr_after) == list(range(n, max_steps)), sorted(lr_after)
    assert lr_ref[n - 1] < lr_ref[n] < max(lr_ref.values())  # cut while still warming up
    assert {s: lr_after[s] for s in lr_after} == {s: lr_ref[s] for s in lr_after}  # the same LR at every step

    draws_ref, draws_cut = _probe(ref), _probe(cut)
    assert [draws_cut[s] for s in range(n, max_steps)] == [draws_ref[s] for s in range(n, max_steps)]
    # The probe can tell: a fresh start (what a resume without RNG states would draw) draws otherwise.
    assert draws_ref[n] != draws_ref[0]
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


def test_newest_checkpoint_is_chosen_by_global_step(tmp_path: Path) -> None:
    """hpc_ckpt_2 is the newest hpc file by number, but last.ckpt holds the later step; a torn (empty) file and a
    foreign one are no candidates; a sharded folder is read from its meta.pt; ties go to the hpc checkpoint."""
    from perceiver_lit.callbacks.preemption import checkpoint_step, newest_checkpoint

    def save(name: str, step: int) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": step, "state_dict": {"w": torch.zeros(3)}}, path)
        return str(path)

    paths = [
        save("hpc_ckpt_1.ckpt", 31),
        save("hpc_ckpt_2.ckpt", 40),
        save("checkpoints/last.ckpt", 61),
        save("sharded/last.ckpt/meta.pt", 50)[: -len("/meta.pt")],
    ]
    (tmp_path / "torn.ckpt").write_bytes(b"")
    (tmp_path / "foreign.ckpt").write_text("not a checkpoint")
    assert checkpoint_step(tmp_path / "torn.ckpt") is None and checkpoint_step(tmp_path / "foreign.ckpt") is None
    assert checkpoint_step(paths[3]) == 50
    candidates = [*paths, str(tmp_path / "torn.ckpt"), str(tmp_path / "foreign.ckpt")]
    assert newest_checkpoint(candidates) == (paths[2], 61)
    assert newest_checkpoint(paths[:2]) == (paths[1], 40)
    assert newest_checkpoint([str(tmp_path / "torn.ckpt")]) is None
    # A tie goes to the hpc checkpoint (saved at the end of its step), even when a last.ckpt of that step is newer
    # (a Slurm requeue after SIGUSR1); between two last checkpoints, to the newer file.
    tie = save("tie/checkpoints/last.ckpt", 40)
    os.utime(tie, (time.time() + 10, time.time() + 10))
    assert newest_checkpoint([paths[1], tie]) == (paths[1], 40)
    newer = save("tie/other/last.ckpt", 40)
    os.utime(newer, (time.time() + 20, time.time() + 20))
    assert newest_checkpoint([tie, newer]) == (newer, 40)
