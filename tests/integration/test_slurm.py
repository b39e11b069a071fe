"""sbatch/train.sbatch and sbatch/sweep.sbatch on a real Slurm (tests/fixtures/slurm.py: slurmctld + nodes n1, n2
on this machine), with the shipped presets and the CLI's own W&B logger (offline).

1. A 2-node x 1-task DDP job with ddp.yaml's own precision (bf16-mixed) is requeued twice: SIGUSR1 (the time-limit
   warning: PreemptionCheckpoint saves `hpc_ckpt_1.ckpt` and requeues), then `scontrol requeue` (SIGTERM to every
   process of the job, wandb's service included: `last.ckpt` is saved at a later step). Each restart resumes
   from the newest checkpoint by global step, the W&B run keeps one id, every attempt ends its run with an exit
   record, and the job log holds no traceback.
2. SIGTERM under Slurm (a job cut without requeue), then a new job into the same run directory with
   `--ckpt_path last`: it resumes at the saved step, in the same W&B run.
3. sweep.sbatch runs a real `perceiver-lit fit` trial (single device, SingleDeviceStrategy); SIGUSR1 makes
   PreemptionCheckpoint save at a step boundary with RNG states and requeue; the trial resumes and is marked done.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from perceiver_lit.callbacks.preemption import checkpoint_step
from tests.fixtures.slurm import QUICKSTART, REPO, SlurmCluster, tiny_fit_config, wandb_runs

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

SBATCH = REPO / "sbatch" / "train.sbatch"
STEPS_PER_EPOCH = 400 // (2 * 16)  # fixture shards: 400 train samples; 2 ranks x batch 16
# The venv of this interpreter (the jobs activate it and run its perceiver-lit), else the repo's .venv.
VENV = str(Path(sys.prefix) if (Path(sys.prefix) / "bin" / "activate").exists() else REPO / ".venv")
TRACEBACK = re.compile(r"Traceback|ConnectionResetError|BrokenPipeError|socket\.send\(\) raised")


def submit(
    cluster: SlurmCluster,
    tmp: Path,
    shards: object,
    max_steps: int,
    extra: str = "",
    nodes: int = 2,
    run_dir: Path | None = None,
    log: Path | None = None,
) -> tuple[str, Path]:
    """Submit train.sbatch for `nodes` x 1 CPU task with ddp.yaml as shipped (bf16-mixed) and W&B offline;
    returns (job id, its log file)."""
    config = tiny_fit_config(
        tmp / "tiny.yaml", shards, max_steps=max_steps, log_dir=tmp, logger="wandb", precision=None
    )
    env = {
        "CONFIGS": f"{QUICKSTART} {REPO / 'configs/trainer/ddp.yaml'} {config}",
        # The only override of the preset: this machine has no GPU. bf16-mixed runs as CPU autocast.
        "ACCELERATOR": "cpu",
        "RUN_ROOT": str(tmp / "runs"),
        "PLIT_MASTER_ADDR": "127.0.0.1",  # both "nodes" are this machine; n1 is no resolvable host name
        "VENV": VENV,
        "EXTRA_ARGS": extra,
        "WANDB_MODE": "offline",
    }
    if run_dir is not None:
        env["RUN_DIR"] = str(run_dir)
    log = log or tmp / "job.out"
    job = cluster.sbatch(
        "--job-name=plit-test",
        f"--partition={cluster.partition}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=5",
        f"--output={log}",
        f"--chdir={tmp}",
        str(SBATCH),
        env=env,
    )
    return job, log


def run_dir(tmp: Path, job: str) -> Path:
    return tmp / "runs" / f"plit-test-{job}"


def _step(path: Path) -> int:
    """The checkpoint's global step; -1 while it is missing or being written."""
    step = checkpoint_step(path) if path.exists() else None
    return -1 if step is None else step


def _wait_for(what: str, cond, timeout: float, cluster: SlurmCluster, job: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        info = cluster.job(job)
        assert info.get("JobState") in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"), (
            f"{what}: job is {info.get('JobState')}\n{log.read_text()[-4000:] if log.exists() else ''}" + cluster.logs()
        )
        assert time.monotonic() < deadline, (
            f"{what} after {timeout}s: {info}\n" + (log.read_text()[-4000:] if log.exists() else "") + cluster.logs()
        )
        time.sleep(0.3)


def _requeued(cluster: SlurmCluster, job: str, restarts: int) -> bool:
    info = cluster.job(job)
    return int(info.get("Restarts", 0)) >= restarts and info["JobState"] == "PENDING"


def test_train_sbatch_requeued_twice_resumes_from_the_newest_checkpoint(
    slurm_cluster: SlurmCluster, fashion_shards, tmp_path: Path
) -> None:
    max_steps = 3 * STEPS_PER_EPOCH  # both signals land mid-training: the first after step 4, the second ~4 later
    # Checkpoint defers periodic saves until its monitor (val/acc1) exists: validate early so last.ckpt comes soon.
    job, log = submit(
        slurm_cluster,
        tmp_path,
        fashion_shards,
        max_steps=max_steps,
        extra="--checkpoint.every_n_train_steps 3 --trainer.val_check_interval 4",
    )
    run = run_dir(tmp_path, job)
    last, hpc = run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_1.ckpt"

    # 1. SIGUSR1 once training is under way (the first periodic checkpoint exists): Lightning's handlers are set.
    _wait_for("no first checkpoint", last.exists, 240, slurm_cluster, job, log)
    slurm_cluster.run("scancel", "--signal=USR1", job)  # to every task (not the batch shell), like --signal=USR1@90
    # PreemptionCheckpoint saves hpc_ckpt_1.ckpt at the end of the running step on both ranks, finishes the W&B
    # run and runs `scontrol requeue`; Slurm holds a requeued job back ~2 minutes (BeginTime), cut short here as an
    # admin would.
    _wait_for("not requeued after USR1", lambda: _requeued(slurm_cluster, job, 1), 90, slurm_cluster, job, log)
    k1 = _step(hpc)
    slurm_cluster.release(job)

    # 2. Once the restarted job has passed k1 (a periodic last.ckpt beyond it), `scontrol requeue`: SIGTERM.
    _wait_for(
        "restart 1 never trained past the hpc checkpoint", lambda: _step(last) > k1 + 3, 240, slurm_cluster, job, log
    )
    slurm_cluster.run("scontrol", "requeue", job)
    _wait_for(
        "not requeued after scontrol requeue", lambda: _requeued(slurm_cluster, job, 2), 90, slurm_cluster, job, log
    )
    out = log.read_text()
    m = re.search(r"Preempted at global step (\d+): saved (\S+)", out)
    assert m and m.group(2) == str(last), out[-4000:]
    k2 = int(m.group(1))
    assert k2 > k1 and _step(last) == k2 and _step(hpc) == k1
    slurm_cluster.release(job)

    info = slurm_cluster.wait(job, timeout=300)
    out = log.read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{out[-4000:]}"
    assert info["Restarts"] == "2" and info["NumNodes"] == "2" and info["NodeList"] == "n[1-2]"
    assert "restart 2:" in out and "2 node(s) x 1 task(s)" in out
    # The preset's own precision, as the run saved it and as Lightning ran it.
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
    assert out.count("Using bfloat16 Automatic Mixed Precision (AMP)") == 3

    # Restart 1 resumed at k1 from hpc_ckpt_1, saved at the end of that step (it wins a tie with a last.ckpt of the
    # same step, which may have been saved later in the step: Lightning can resume that with the logger step one
    # off); restart 2 at k2 from the later last.ckpt, not from hpc_ckpt_1 again.
    resumed = re.findall(r"Resuming from (\S+) \(global step (\d+)\)", out)
    assert [int(s) for _, s in resumed] == [k1, k2] and [p for p, _ in resumed] == [str(hpc), str(last)], resumed
    restored = re.findall(r"Restored all states from the checkpoint at (\S+)", out)
    assert restored == [p for p, _ in resumed], restored
    assert _step(last) == max_steps and (run / "checkpoints" / "best.ckpt").exists()

    # One W&B run across the job; each attempt's steps continue where its checkpoint was.
    runs = wandb_runs(run)
    assert len(runs) == 1, runs
    folders = next(iter(runs.values()))
    # SIGTERM stops wandb-core with the job (docs/cluster.md): what it had not written yet is lost, possibly the
    # attempt's whole folder (no run record, no rows). Every folder that has a run record is this job's fit run.
    recorded = [f for f in folders if f["job_type"] is not None]
    assert {f["job_type"] for f in recorded} == {"fit"} and len({f["group"] for f in recorded}) == 1, folders
    logged = [f["steps"] for f in folders if f["steps"]]
    assert logged[0] == list(range(k1)), folders  # finished before the requeue: every row is there
    middle = [s for steps in logged[1:-1] for s in steps]  # the SIGTERM'd attempt: a prefix of its rows, or none
    assert middle == list(range(k1, k1 + len(middle))) and k1 + len(middle) <= k2, folders
    # The end: every row from the step the last attempt resumed at, numbered by the global step. (A last.ckpt that
    # Lightning resumed with a step counted twice numbered every row from there one ahead: k2 + 1 .. max_steps.)
    assert logged[-1] == list(range(k2, max_steps)), folders
    # Every attempt ended its run with an exit record: USR1 (0), SIGTERM (143, in the reopened run), the end (0).
    assert [f["exit"] for f in folders if f["exit"] is not None] == [0, 143, 0], folders
    bad = [line for line in out.splitlines() if TRACEBACK.search(line)]
    assert not bad, "\n".join(bad) + "\n" + out[-4000:]
    assert not slurm_cluster.job_processes(), "the job left processes behind"


def test_sigterm_under_slurm_then_ckpt_path_last(slurm_cluster: SlurmCluster, fashion_shards, tmp_path: Path) -> None:
    max_steps = 2 * STEPS_PER_EPOCH
    # Checkpoint defers periodic saves until its monitor (val/acc1) exists: validate early so last.ckpt comes soon.
    periodic = "--checkpoint.every_n_train_steps 3 --trainer.val_check_interval 4"
    job, log = submit(slurm_cluster, tmp_path, fashion_shards, max_steps=max_steps, nodes=1, extra=periodic)
    run = run_dir(tmp_path, job)
    last = run / "checkpoints" / "last.ckpt"
    _wait_for("no first checkpoint", last.exists, 240, slurm_cluster, job, log)
    slurm_cluster.run("scancel", "--signal=TERM", job)  # the job's processes, wandb-core too; no requeue
    info = slurm_cluster.wait(job, timeout=90)
    out = log.read_text()
    assert info["JobState"] == "FAILED", f"{info}\n{out[-3000:]}"  # a cut run exits 128 + SIGTERM
    k = int(re.search(r"Preempted at global step (\d+)", out).group(1))
    assert _step(last) == k

    job2, log2 = submit(
        slurm_cluster,
        tmp_path,
        fashion_shards,
        max_steps=max_steps,
        nodes=1,
        run_dir=run,
        extra=f"{periodic} --ckpt_path last",
        log=tmp_path / "job2.out",
    )
    info = slurm_cluster.wait(job2, timeout=300)
    out2 = log2.read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{out2[-4000:]}"
    assert f"Restored all states from the checkpoint at {last}" in out2
    assert _step(last) == max_steps
    runs = wandb_runs(run)
    assert len(runs) == 1, runs  # --ckpt_path resumes the same W&B run
    logged = [f["steps"] for f in next(iter(runs.values())) if f["steps"]]
    assert logged[-1] == list(range(k, max_steps))
    # job 1's rows, as far as its SIGTERM'd wandb-core wrote them (docs/cluster.md): a prefix of 0..k-1, or none
    cut = [s for steps in logged[:-1] for s in steps]
    assert cut == list(range(len(cut))) and len(cut) <= k, logged
    bad = [line for line in (out + out2).splitlines() if TRACEBACK.search(line)]
    assert not bad, "\n".join(bad)


def test_sweep_sbatch_real_fit_trial_single_device_requeue(
    slurm_cluster: SlurmCluster, fashion_shards, tmp_path: Path
) -> None:
    """Array task i runs `perceiver-lit-sweep trial SWEEP_DIR i`: a real single-device `perceiver-lit fit` in
    SWEEP_DIR/trial-<i>. SIGUSR1 goes through PreemptionCheckpoint (SingleDeviceStrategy has no
    cluster_environment of its own), which saves at a step boundary with RNG states and requeues; the trial
    resumes from that checkpoint and is marked done."""
    from perceiver_lit.sweeps.runner import prepare
    from perceiver_lit.sweeps.spec import parse_spec

    max_steps = 150  # one rank, batch 16: 25 steps per epoch; long enough that USR1 lands mid-training
    config = tiny_fit_config(
        tmp_path / "tiny.yaml", fashion_shards, max_steps=max_steps, log_dir=tmp_path, logger="wandb", precision=None
    )  # quickstart's own precision
    spec = parse_spec(
        {
            "name": "slurm-test",
            "method": "grid",
            "metric": {"name": "val/acc1", "goal": "maximize"},
            "parameters": {"model.init_args.net.init_args.num_latents": {"values": [16]}},
            "command": [
                "perceiver-lit",
                "fit",
                "--config",
                str(QUICKSTART),
                "--config",
                str(config),
                "--checkpoint.every_n_train_steps=3",
                "--trainer.val_check_interval=4",
                "${args}",
            ],
        }
    )
    sweep = tmp_path / "sweep"
    (trial,) = prepare(spec, sweep)
    job = slurm_cluster.sbatch(
        "--array=0",
        f"--partition={slurm_cluster.partition}",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=5",
        f"--output={tmp_path}/%A_%a.out",
        f"--chdir={tmp_path}",
        str(REPO / "sbatch" / "sweep.sbatch"),
        str(sweep),
        env={"VENV": VENV, "WANDB_MODE": "offline"},
    )
    task = f"{job}_0"
    log = tmp_path / f"{job}_0.out"
    trial_log = trial / "log.txt"
    _wait_for(
        "trial never reached its first checkpoint",
        (trial / "checkpoints" / "last.ckpt").exists,
        240,
        slurm_cluster,
        task,
        trial_log,
    )
    slurm_cluster.run("scancel", "--signal=USR1", task)
    _wait_for("trial not requeued", lambda: _requeued(slurm_cluster, task, 1), 90, slurm_cluster, task, trial_log)
    text = trial_log.read_text()
    m = re.search(r"Slurm requeue signal: saved (\S+) at global step (\d+)", text)  # ours, not Lightning's handler
    assert m and m.group(1) == str(trial / "hpc_ckpt_1.ckpt"), text[-4000:]
    assert "Handling auto-requeue signal" not in text
    hpc = torch.load(trial / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert hpc["global_step"] == int(m.group(2)) and hpc["callbacks"]["PreemptionCheckpoint"]["rng"]
    # Released only once its first incarnation has ended (srun waits up to KillWait for its step).
    slurm_cluster.release(task)

    info = slurm_cluster.wait(task, timeout=300)
    text = trial_log.read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{log.read_text()[-2000:]}\n{text[-4000:]}" + slurm_cluster.logs()
    assert f"(global step {m.group(2)})" in re.search(r"Resuming from .*", text).group(0)
    assert (trial / "done").exists() and _step(trial / "checkpoints" / "last.ckpt") == max_steps
    assert len(wandb_runs(trial)) == 1
    assert not [line for line in text.splitlines() if TRACEBACK.search(line)]
