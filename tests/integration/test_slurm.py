"""sbatch/train.sbatch on a real Slurm (tests/fixtures/slurm.py: slurmctld + nodes n1, n2 on this machine).

1. A 2-node x 1-task DDP job (CPU, gloo) on the Fashion-MNIST fixture shards completes, with checkpoints and
   metrics in its job-id-keyed run directory.
2. Preemption: SIGUSR1 to the running job makes Lightning save `hpc_ckpt_1.ckpt` and requeue it; the requeued job
   resumes from that checkpoint and finishes, and the logged global steps run on without a restart from zero or a
   gap.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

from tests.fixtures.slurm import QUICKSTART, REPO, SlurmCluster, csv_steps, tiny_fit_config

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

SBATCH = REPO / "sbatch" / "train.sbatch"
STEPS_PER_EPOCH = 400 // (2 * 16)  # fixture shards: 400 train samples; 2 ranks x batch 16


def submit(cluster: SlurmCluster, tmp: Path, shards: object, max_steps: int, extra: str = "") -> tuple[str, Path]:
    """Submit train.sbatch for 2 nodes x 1 CPU task; returns (job id, its log file)."""
    config = tiny_fit_config(tmp / "tiny.yaml", shards, max_steps=max_steps, log_dir=tmp)
    env = {
        "CONFIGS": f"{QUICKSTART} {REPO / 'configs/trainer/ddp.yaml'} {config}",
        "ACCELERATOR": "cpu",
        "RUN_ROOT": str(tmp / "runs"),
        "PLIT_MASTER_ADDR": "127.0.0.1",  # both "nodes" are this machine; n1 is no resolvable host name
        "VENV": str(REPO / ".venv"),
        "EXTRA_ARGS": extra,
    }
    log = tmp / "job.out"
    job = cluster.sbatch("--job-name=plit-test", f"--partition={cluster.partition}", "--nodes=2",
                         "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=5",
                         f"--output={log}", f"--chdir={tmp}", str(SBATCH), env=env)
    return job, log


def run_dir(tmp: Path, job: str) -> Path:
    return tmp / "runs" / f"plit-test-{job}"


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_train_sbatch_two_nodes_completes(slurm_cluster: SlurmCluster, fashion_shards, tmp_path: Path) -> None:
    job, log = submit(slurm_cluster, tmp_path, fashion_shards, max_steps=STEPS_PER_EPOCH)
    info = slurm_cluster.wait(job, timeout=150)
    out = log.read_text() if log.exists() else "(no log)"
    assert info["JobState"] == "COMPLETED", f"{info}\n{out[-4000:]}"
    assert info["NumNodes"] == "2" and info["NodeList"] == "n[1-2]"
    assert "2 node(s) x 1 task(s)" in out
    run = run_dir(tmp_path, job)
    last = _ckpt(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == STEPS_PER_EPOCH
    assert (run / "checkpoints" / "best.ckpt").exists()
    steps = csv_steps(tmp_path)
    assert list(steps.values()) == [list(range(STEPS_PER_EPOCH))], steps  # rank 0 logged every step once
    assert not slurm_cluster.job_processes(), "the job left processes behind"


def test_train_sbatch_preempted_requeues_and_resumes(slurm_cluster: SlurmCluster, fashion_shards,
                                                     tmp_path: Path) -> None:
    max_steps = 20 * STEPS_PER_EPOCH  # long enough that the signal lands mid-training on a fast machine too
    extra = "--checkpoint.every_n_train_steps 3"  # PreemptionCheckpoint is a CLI default
    job, log = submit(slurm_cluster, tmp_path, fashion_shards, max_steps=max_steps, extra=extra)
    run = run_dir(tmp_path, job)

    # Signal once training is under way (the first periodic checkpoint exists): Lightning's handlers are set.
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.ckpt").exists():
        assert slurm_cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), log.read_text()[-4000:]
        assert time.monotonic() < deadline, "the job never reached its first checkpoint\n" + slurm_cluster.logs()
        time.sleep(0.2)
    slurm_cluster.run("scancel", "--signal=USR1", job)  # to every task (not the batch shell), like --signal=USR1@90

    # PreemptionCheckpoint (Lightning's auto-requeue, made collective-safe) saves hpc_ckpt_1.ckpt at the end of the
    # running step on both ranks and runs `scontrol requeue`; Slurm holds a requeued job back ~2 minutes
    # (BeginTime), which we cut short as an admin would.
    deadline = time.monotonic() + 90
    while not (int(slurm_cluster.job(job).get("Restarts", 0)) >= 1
               and slurm_cluster.job(job)["JobState"] == "PENDING"):
        assert time.monotonic() < deadline, f"job not requeued: {slurm_cluster.job(job)}\n{log.read_text()[-4000:]}"
        time.sleep(0.3)
    hpc = run / "hpc_ckpt_1.ckpt"
    assert hpc.exists(), f"no hpc checkpoint in {run}: {sorted(p.name for p in run.iterdir())}"
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")

    info = slurm_cluster.wait(job, timeout=150)
    out = log.read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{out[-4000:]}"
    assert info["Restarts"] == "1"
    assert "restart 1:" in out  # the script's banner on the second start
    k = _ckpt(hpc)["global_step"]
    assert 3 <= k < max_steps
    assert f"Restored all states from the checkpoint at {hpc}" in out
    assert _ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == max_steps

    # Global steps: the first attempt logged 0..k-1 and stopped, the second k..max-1: no restart from zero, no gap.
    first, second = csv_steps(tmp_path).values()
    assert first == list(range(k)) and second == list(range(k, max_steps)), (k, first, second)
    assert re.search(r"requeu", out, re.I)
    assert not slurm_cluster.job_processes(), "the job left processes behind"


def test_sweep_sbatch_runs_trial_i_in_array_task_i(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The contract: array task i runs `perceiver-lit-sweep trial SWEEP_DIR i`, in SWEEP_DIR/trial-<i>."""
    import json
    import sys

    from perceiver_lit.sweeps.metrics import TRIAL_DIR_ENV

    sweep = tmp_path / "sweep"
    probe = ("import os, pathlib; d = pathlib.Path(os.environ[%r]); "
             "(d / 'ran.txt').write_text(os.environ['SLURM_ARRAY_TASK_ID'] + ' ' + d.name)" % TRIAL_DIR_ENV)
    for i in range(2):
        (sweep / f"trial-{i}").mkdir(parents=True)
        (sweep / f"trial-{i}" / "trial.json").write_text(json.dumps(
            {"index": i, "params": {"i": i}, "command": [sys.executable, "-c", probe], "cwd": str(tmp_path)}))
    job = slurm_cluster.sbatch("--array=0-1", f"--partition={slurm_cluster.partition}", "--gpus-per-node=0",
                               "--cpus-per-task=1", "--time=5", f"--output={tmp_path}/%A_%a.out",
                               f"--chdir={tmp_path}", str(REPO / "sbatch" / "sweep.sbatch"), str(sweep),
                               env={"VENV": str(REPO / ".venv")})
    for i in range(2):
        info = slurm_cluster.wait(f"{job}_{i}", timeout=120)
        out = (tmp_path / f"{job}_{i}.out").read_text()
        assert info["JobState"] == "COMPLETED", f"{info}\n{out[-3000:]}"
        assert (sweep / f"trial-{i}" / "ran.txt").read_text() == f"{i} trial-{i}"
        assert (sweep / f"trial-{i}" / "done").exists()
