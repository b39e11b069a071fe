"""The run directory as the CLI leaves it: one run's outputs only, under fixed names, one live fit at a time.

Each case drives `perceiver-lit fit/test` as a user runs it (in-process, or as a subprocess where the exit status
and the one-line message matter).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datamodules.errors import DataError
from tests.fixtures.training import fashion_data, run_cli, tiny_perceiver, write_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _config(shards, name: str = "run", epochs: int = 1, **model_args) -> dict:
    model = tiny_perceiver()
    model["init_args"].update(model_args)
    return {
        "name": name,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": epochs,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": model,
        "data": fashion_data(shards, batch_size=50, samples_per_epoch=100),  # 2 steps per epoch
    }


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_second_fit_into_a_used_run_dir_replaces_best_and_last(fashion_shards, tmp_path):
    """issue 20.1: LightningCLI passes enable_version_counter=True; the names must still never change. Each fit is
    its own process, as a user runs them: W&B has finished writing the first run when the second one starts."""
    config = _config(fashion_shards, epochs=2)
    del config["trainer"]["logger"]  # the default W&B logger, offline: its runs must not mix either
    cfg = write_config(tmp_path, config)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[2]), WANDB_MODE="offline")
    cli = str(Path(sys.executable).parent / "perceiver-lit")

    def fit(*extra: str) -> None:
        proc = subprocess.run(
            [cli, "fit", "--config", str(cfg), *extra],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    fit()
    ckpts = tmp_path / "runs" / "run" / "checkpoints"
    assert _load(ckpts / "best.ckpt")["global_step"] in (2, 4) and _load(ckpts / "last.ckpt")["global_step"] == 4

    fit("--trainer.max_epochs", "1")
    assert sorted(os.listdir(ckpts)) == ["best.ckpt", "last.ckpt"]  # no best-v1.ckpt / last-v1.ckpt
    assert _load(ckpts / "best.ckpt")["global_step"] == 2 and _load(ckpts / "last.ckpt")["global_step"] == 2
    # the earlier run was moved aside whole when the new one started training; nothing of it is mixed in
    previous = tmp_path / "runs" / "run.previous"
    assert _load(previous / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert (previous / "config.yaml").is_file() and (tmp_path / "runs" / "run" / "config.yaml").is_file()
    runs_now = {p.name for p in (tmp_path / "runs" / "run" / "wandb").glob("offline-run-*")}
    runs_before = {p.name for p in (previous / "wandb").glob("offline-run-*")}
    assert len(runs_now) == 1 and len(runs_before) == 1 and runs_now != runs_before
    assert not (tmp_path / "runs" / "run" / "run.lock").exists()  # released at the end


@pytest.fixture(scope="module")
def trained(fashion_shards, tmp_path_factory):
    """A finished 1-epoch (2-step) fit with 32 latents: (work dir, config file, run dir)."""
    work = tmp_path_factory.mktemp("trained")
    model = tiny_perceiver(num_latents=32)
    config = _config(fashion_shards)
    config["model"] = model
    cfg = write_config(work, config)
    run_cli(["fit", "--config", cfg], cwd=work)
    return work, cfg, work / "runs" / "run"


def _copy_run(trained, tmp_path) -> tuple[str, Path]:
    """A private copy of the trained run (its run dir under tmp_path/runs/run) and its config file."""
    import shutil

    work, cfg, run = trained
    shutil.copytree(run, tmp_path / "runs" / "run")
    return cfg, tmp_path / "runs" / "run"


def test_resume_with_other_model_settings_is_refused_naming_each_key(trained, tmp_path):
    """issue 20.2: Lightning parsed the checkpoint's hyperparameters over the command line and trained 32 latents."""
    from perceiver_lit.run_dir import RunDirError

    cfg, run = _copy_run(trained, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    key = r"model\.init_args\.net\.init_args\.num_latents: checkpoint 32, now 16"
    with pytest.raises(RunDirError, match=key + r".*start a new run instead: drop --ckpt_path.*--init_weights"):
        run_cli(
            [
                "fit",
                "--config",
                cfg,
                "--trainer.max_epochs",
                "2",
                "--ckpt_path",
                str(last),
                "--model.init_args.net.init_args.num_latents",
                "16",
            ],
            cwd=tmp_path,
        )
    # a changed lr is refused too, by `--ckpt_path last` (resolved by Lightning, checked when loaded); both keys named
    with pytest.raises(RunDirError, match=r"model\.init_args\.lr: checkpoint 0\.003, now 0\.1; " + key):
        run_cli(
            [
                "fit",
                "--config",
                cfg,
                "--trainer.max_epochs",
                "2",
                "--ckpt_path",
                "last",
                "--model.init_args.lr",
                "0.1",
                "--model.init_args.net.init_args.num_latents",
                "16",
            ],
            cwd=tmp_path,
        )
    assert last.read_bytes() == before  # nothing trained
    saved = (run / "config.yaml").read_text()
    assert "num_latents: 32" in saved and "lr: 0.003" in saved  # config.yaml still describes the run
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]  # and nothing else was left
    assert not (run / "run.lock").exists()


def test_resume_applies_runtime_settings_and_new_run_from_weights(trained, tmp_path, caplog):
    """issue 20.2: a runtime-only change is applied and said; --init_weights starts a new run from the weights."""
    import logging

    cfg, run = _copy_run(trained, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    caplog.set_level(logging.INFO)
    cli = run_cli(
        [
            "fit",
            "--config",
            cfg,
            "--trainer.max_epochs",
            "2",
            "--ckpt_path",
            str(last),
            "--model.init_args.net.init_args.activation_checkpointing",
            "true",
        ],
        cwd=tmp_path,
    )
    assert cli.trainer.global_step == 4
    assert any(
        "changed runtime settings, applied: model.init_args.net.init_args.activation_checkpointing: "
        "checkpoint False, now True" in r.getMessage()
        for r in caplog.records
    )
    assert _load(last)["hyper_parameters"]["net"]["init_args"]["activation_checkpointing"] is True
    assert not (tmp_path / "runs" / "run.previous").exists()  # a resume continues the run that is there

    weights = _load(last)["state_dict"]
    new = run_cli(
        [
            "fit",
            "--config",
            cfg,
            "--name",
            "new",
            "--init_weights",
            str(last),
            "--model.init_args.lr",
            "0.1",
            "--trainer.max_steps",
            "0",
        ],
        cwd=tmp_path,
    )
    torch.testing.assert_close(new.model.state_dict()["net.latents"], weights["net.latents"])
    assert new.trainer.global_step == 0 and new.model.hparams.lr == 0.1


def test_evaluating_a_checkpoint_runs_the_configured_model_or_says_why_not(trained, tmp_path):
    """issue 20.2 for validate/test/predict: the checkpoint's hyperparameters no longer replace the config's."""
    from perceiver_lit.run_dir import RunDirError

    cfg, run = _copy_run(trained, tmp_path)
    best = str(run / "checkpoints" / "best.ckpt")
    with pytest.raises(RunDirError, match=r"num_latents: checkpoint 32, now 16\); validate it with the config"):
        run_cli(
            ["validate", "--config", cfg, "--ckpt_path", best, "--model.init_args.net.init_args.num_latents", "16"],
            cwd=tmp_path,
        )
    cli = run_cli(["validate", "--config", cfg, "--ckpt_path", best, "--model.init_args.lr", "0.1"], cwd=tmp_path)
    assert cli.model.net.latents.shape[0] == 32 and cli.model.hparams.lr == 0.1  # lr is not used by evaluation


def test_second_live_fit_into_a_run_dir_is_refused_and_a_stale_lock_is_taken_over(trained, tmp_path):
    """issue 20.3: two fits into one run directory both ran and mixed their outputs."""
    import json
    import socket

    from perceiver_lit.run_dir import RunDirError

    cfg, run = _copy_run(trained, tmp_path)
    first = subprocess.Popen(["sleep", "60"])  # a live process holding the run, as a first fit does
    try:
        from perceiver_lit.run_dir import _proc_start

        lock = {
            "pid": first.pid,
            "host": socket.gethostname(),
            "start": _proc_start(first.pid),
            "started": "2026-01-01 00:00:00",
        }
        (run / "run.lock").write_text(json.dumps(lock))
        with pytest.raises(
            RunDirError,
            match=rf"in use by another fit: pid {first.pid} on host "
            rf"{socket.gethostname()}",
        ):
            run_cli(["fit", "--config", cfg], cwd=tmp_path)
        assert json.loads((run / "run.lock").read_text())["pid"] == first.pid  # the first run's lock is kept
        assert (run / "checkpoints" / "last.ckpt").is_file()  # and its outputs
    finally:
        first.kill()
        first.wait()
    # the first process is gone: its lock is stale, the next fit takes it over and runs
    cli = run_cli(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_epochs", "2"], cwd=tmp_path)
    assert cli.trainer.global_step == 4 and not (run / "run.lock").exists()


def test_lock_is_stale_after_a_slurm_requeue_on_another_node(tmp_path, monkeypatch):
    """issue 20.3: under a requeue the job id stays and the previous process (maybe on another node) is dead."""
    import json

    from perceiver_lit.run_dir import RunDirError, RunLock

    (tmp_path / "run.lock").write_text(json.dumps({"pid": 1, "host": "node-a", "slurm_job_id": "77"}))
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(RunDirError, match="pid 1 on host node-a"):
        RunLock(str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    lock = RunLock(str(tmp_path))
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def _perceiver_lit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "perceiver_lit.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ckpt_path_that_is_not_a_checkpoint_says_so_in_one_line(trained, tmp_path):
    """issue 20.9: torch's UnpicklingError advised re-running with weights_only=False."""
    _, cfg, _ = trained
    bad = tmp_path / "notes.ckpt"
    bad.write_text("epoch: 3\n")
    out = _perceiver_lit("fit", "--config", cfg, "--ckpt_path", str(bad), cwd=tmp_path)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1] == (
        f"perceiver-lit: error: {bad} is not a perceiver-lit or Lightning checkpoint (not a torch.save file)"
    )
    assert "Traceback" not in out.stderr and "weights_only" not in out.stderr + out.stdout
    assert not (tmp_path / "runs").exists()  # nothing that looks like a run


def test_checkpoints_are_written_beside_their_target_and_a_truncated_one_is_named(trained, tmp_path, monkeypatch):
    """issue 19.9: with $TMPDIR on another filesystem (tmpfs here) the move rewrote last.ckpt in place."""
    import tempfile

    from perceiver_lit.checkpoint_io import CheckpointFileError

    cfg, run = _copy_run(trained, tmp_path)
    shm = tempfile.mkdtemp(dir="/dev/shm") if os.path.isdir("/dev/shm") else str(tmp_path / "other-tmp")
    monkeypatch.setattr(tempfile, "tempdir", shm)  # what TMPDIR=/dev/shm/... does
    monkeypatch.setenv("TMPDIR", shm)
    ckpts = str(run / "checkpoints")
    writes, renames = [], []

    def audit(event, args):
        if not _AUDIT[0]:
            return
        if event == "open" and args[0] is not None and isinstance(args[0], (str, bytes)):
            path, mode, flags = str(args[0]), args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (flags and flags & (os.O_WRONLY | os.O_RDWR)):
                writes.append(os.path.abspath(path))
        elif event == "os.rename":
            renames.append((os.path.abspath(str(args[0])), os.path.abspath(str(args[1]))))

    _install_audit(audit)
    _AUDIT[0] = True
    try:
        run_cli(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_epochs", "2"], cwd=tmp_path)
    finally:
        _AUDIT[0] = False
    targets = {os.path.join(ckpts, "last.ckpt"), os.path.join(ckpts, "best.ckpt")}
    replaced = {dst for src, dst in renames if dst in targets and os.path.dirname(src) == ckpts}
    assert replaced == targets, renames
    assert not targets & set(writes), "a checkpoint was rewritten in place"
    assert not [w for w in writes if w.startswith(shm)], "a checkpoint went through $TMPDIR"
    assert not [n for n in os.listdir(ckpts) if n.endswith(".tmp")]
    os.rmdir(shm) if not os.listdir(shm) else None

    # a save cut off by a kill leaves a short file: the resume names it, in one line
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])
    with pytest.raises(CheckpointFileError, match=rf"checkpoint {last} is truncated or corrupt \(4096 bytes"):
        run_cli(["fit", "--config", cfg, "--ckpt_path", str(last), "--trainer.max_epochs", "3"], cwd=tmp_path)
    with pytest.raises(CheckpointFileError, match=rf"checkpoint {last} is truncated or corrupt"):
        run_cli(["fit", "--config", cfg, "--ckpt_path", "last", "--trainer.max_epochs", "3"], cwd=tmp_path)


_AUDIT = [False]
_HOOKS: list = []


def _install_audit(hook) -> None:
    """sys.addaudithook cannot be removed: install one dispatcher once, switched by _AUDIT."""
    _HOOKS[:] = [hook]
    if not getattr(_install_audit, "done", False):
        sys.addaudithook(lambda event, args: [h(event, args) for h in _HOOKS])
        _install_audit.done = True


def test_fit_that_fails_before_its_first_step_leaves_no_run_behind(fashion_shards, tmp_path):
    """Principle: a failed start leaves nothing later commands would take for a run (config, checkpoints, W&B)."""
    import wandb

    config = _config(fashion_shards, name="broken")
    del config["trainer"]["logger"]  # the default W&B logger (offline), which creates its run dir before training
    config["data"]["init_args"]["train_urls"] = str(tmp_path / "missing-{000000..000001}.tar")
    cfg = write_config(tmp_path, config)
    with pytest.raises(Exception) as failed:  # whichever check names the missing shards first
        run_cli(["fit", "--config", cfg], cwd=tmp_path)
    assert "missing-" in str(failed.value)
    wandb.finish()  # whatever W&B still had to write is written now
    assert not (tmp_path / "runs").exists(), sorted(str(p) for p in (tmp_path / "runs").rglob("*"))


@pytest.mark.ddp
def test_ddp_fit_takes_one_lock_and_ranks_above_zero_do_not_refuse_it(trained, tmp_path):
    """issue 20.3 under DDP: rank 0 locks the run; rank 1 (started by Lightning from the same command) must run."""
    _, cfg, _ = trained
    out = _perceiver_lit(
        "fit", "--config", cfg, "--name", "ddp", "--trainer.strategy", "ddp", "--trainer.devices", "2", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-4000:]
    run = tmp_path / "runs" / "ddp"
    assert _load(run / "checkpoints" / "last.ckpt")["global_step"] == 1  # 100 samples, 50 per step, 2 ranks
    assert not (run / "run.lock").exists() and "in use by another fit" not in out.stderr


def test_eval_that_fails_before_its_first_batch_leaves_nothing_of_its_own(trained, tmp_path):
    """Principle, for test: its config_test.yaml and W&B run are removed; the trained run is left as it was."""
    import shutil

    import wandb

    work, cfg, run = trained
    shutil.copytree(run, tmp_path / "runs" / "run")
    before = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "runs").rglob("*"))
    with pytest.raises(DataError) as failed:
        run_cli(
            [
                "test",
                "--config",
                cfg,
                "--trainer.logger",
                "true",
                "--ckpt_path",
                "last",
                "--data.init_args.test_urls",
                str(tmp_path / "missing-000000.tar"),
            ],
            cwd=tmp_path,
        )
    assert "missing-000000.tar" in str(failed.value)
    wandb.finish()  # whatever W&B still had to write is written now
    assert sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "runs").rglob("*")) == before
