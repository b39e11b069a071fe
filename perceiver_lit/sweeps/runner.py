"""Run a sweep's trials: each in its own directory, one subprocess per trial, locally or as a Slurm job array.

Layout of a sweep directory:

    DIR/sweep.yaml          the spec, as given
    DIR/plan.json           method, seed, every trial's parameter values (so a resumed random sweep reruns the
                            same draws) and `extra_args`, the arguments given after `--` (appended to every trial)
    DIR/trial-<i>/trial.json  {"index", "params", "command", "cwd"}: what trial i runs, exactly
    DIR/trial-<i>/log.txt     its stdout and stderr
    DIR/trial-<i>/metrics.json  its final metrics (written by the TrialMetrics callback)
    DIR/trial-<i>/done        written after the command exits 0: a finished trial, skipped when the sweep runs again
    DIR/trial-<i>/failed      written when it exits non-zero (the sweep goes on; a rerun retries it)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from perceiver_lit.sweeps.spec import SweepError, SweepSpec, build_command, expand

# Kept free of torch/Lightning imports: every Slurm array task starts here.
TRIAL_DIR_ENV = "PERCEIVER_LIT_TRIAL_DIR"  # set for each trial's process: where its metrics.json goes
METRICS_FILE = "metrics.json"
PLAN_FILE = "plan.json"
TRIAL_FILE = "trial.json"
DONE_FILE = "done"
FAILED_FILE = "failed"
LOG_FILE = "log.txt"
METRICS_CALLBACK = "perceiver_lit.sweeps.metrics.TrialMetrics"


def read_metrics(tdir: str | Path) -> dict[str, float | None]:
    file = Path(tdir) / METRICS_FILE
    return json.loads(file.read_text()).get("metrics", {}) if file.exists() else {}


def trial_dir(sweep_dir: str | Path, index: int) -> Path:
    return Path(sweep_dir) / f"trial-{index}"


def is_done(sweep_dir: str | Path, index: int) -> bool:
    return (trial_dir(sweep_dir, index) / DONE_FILE).exists()


def _is_perceiver_lit(command: list[str]) -> bool:
    return bool(command) and (Path(command[0]).name == "perceiver-lit" or "perceiver_lit.cli" in command)


def sweep_name(spec: SweepSpec) -> str:
    """The spec's `name`, else its file's stem: the W&B group of its trials and the prefix of their run names."""
    return spec.name or Path(spec.source).stem


def trial_command(
    spec: SweepSpec,
    params: dict[str, Any],
    tdir: Path | None = None,
    index: int | None = None,
    extra_args: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The spec's command for these values, then `extra_args` (what the user gave after `--`). For `perceiver-lit`
    also: the run name `<sweep>-trial-<index>` and, unless the spec sets one, the W&B group `<sweep>` (before
    `extra_args`, so the user can still override them), and the trial's own root dir and the metrics callback
    (last, so they win over everything). `tdir=None` (`show`): no root dir and no callback."""
    cmd = build_command(spec, params)
    if not _is_perceiver_lit(cmd):
        return cmd + list(extra_args)
    if index is not None:
        cmd.append(f"--name={sweep_name(spec)}-trial-{index}")  # else every trial's run is named after the config
    if not any(tok.startswith("--wandb.group") for tok in [*spec.command, *extra_args]):
        cmd.append(f"--wandb.group={sweep_name(spec)}")
    cmd += list(extra_args)
    if tdir is not None:
        cmd += [f"--trainer.default_root_dir={tdir}", f"--trainer.callbacks+={METRICS_CALLBACK}"]
    return cmd


def prepare(
    spec: SweepSpec,
    sweep_dir: str | Path,
    trials: int | None = None,
    seed: int = 0,
    extra_args: list[str] | None = None,
) -> list[Path]:
    """Write the plan and each trial's trial.json. If DIR already holds a plan of the same spec, keep its trials
    (that is how a sweep resumes); a different spec in the same DIR is an error. `extra_args` (the arguments after
    `--`) are appended to every trial's command and kept in the plan: a resumed sweep reuses them when given none,
    and refuses different ones (the finished trials ran with the old ones)."""
    sweep_dir = Path(sweep_dir).resolve()
    plan_file = sweep_dir / PLAN_FILE
    if plan_file.exists():
        plan = json.loads(plan_file.read_text())
        if plan["spec"] != spec.raw:
            raise SweepError(f"{sweep_dir} holds another sweep ({plan['source']}); pick a new --dir for {spec.source}")
        planned = plan.get("extra_args", [])
        if extra_args and list(extra_args) != planned:
            raise SweepError(
                f"{sweep_dir} was planned with the trial arguments {shlex.join(planned) or '(none)'} "
                f"after `--`, not {shlex.join(extra_args)}; resume with the same ones (or none), or pick "
                "a new --dir"
            )
        extra_args = planned
        if trials and trials > len(plan["trials"]) and spec.method != "grid":
            # Asking a random sweep for more trials extends it with further draws from the same stream.
            plan["trials"] = expand(spec, trials=trials, seed=plan["seed"])
            plan_file.write_text(json.dumps(plan, indent=1))
        all_params = plan["trials"]
    else:
        extra_args = list(extra_args or [])
        all_params = expand(spec, trials=trials, seed=seed)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(spec.raw, sort_keys=False))
        plan = {
            "source": spec.source,
            "method": spec.method,
            "seed": seed,
            "metric": spec.metric,
            "spec": spec.raw,
            "extra_args": extra_args,
            "trials": all_params,
        }
        plan_file.write_text(json.dumps(plan, indent=1))
    dirs = []
    cwd = os.getcwd()
    for i, params in enumerate(all_params):
        tdir = trial_dir(sweep_dir, i)
        tdir.mkdir(exist_ok=True)
        if not (tdir / TRIAL_FILE).exists():
            info = {
                "index": i,
                "params": params,
                "command": trial_command(spec, params, tdir, i, extra_args),
                "cwd": cwd,
            }
            (tdir / TRIAL_FILE).write_text(json.dumps(info, indent=1))
        dirs.append(tdir)
    return dirs


def _resolve_executable(cmd: list[str]) -> list[str]:
    """`perceiver-lit` runs as `<this python> -m perceiver_lit.cli`: the sweep's own interpreter, so a trial never
    depends on PATH (an unactivated venv, a Slurm job's login shell). Other console scripts are looked up next to
    the interpreter when they are not on PATH."""
    if cmd and cmd[0] == "perceiver-lit":
        return [sys.executable, "-m", "perceiver_lit.cli", *cmd[1:]]
    if cmd and shutil.which(cmd[0]) is None:
        local = Path(sys.executable).parent / cmd[0]
        if local.exists():
            return [str(local)] + cmd[1:]
    return cmd


def check_first_trial(spec: SweepSpec, extra_args: list[str] | tuple[str, ...] = ()) -> None:
    """Parse trial 0's `perceiver-lit` command (with `extra_args`) with --print_config (no data, no model: a few
    seconds), so that a misspelled parameter or config key fails here, once, not in every trial or after a Slurm
    array is queued. Commands of other programs are left to themselves."""
    cmd = trial_command(spec, expand(spec, trials=1, seed=0)[0], None, 0, extra_args)
    if not _is_perceiver_lit(cmd):
        return
    proc = subprocess.run([*_resolve_executable(cmd), "--print_config"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        raise SweepError(
            f"{spec.source}: trial 0's command does not parse ({shlex.join(cmd)}):\n{tail}\n"
            "(check the parameter names against `perceiver-lit fit --config ... --print_config`; "
            "--no-check skips this)"
        )


def run_trial(sweep_dir: str | Path, index: int, force: bool = False, echo: bool = False) -> int:
    """Run trial `index` of a prepared sweep in a subprocess; returns its exit code (0 if it was already done)."""
    tdir = trial_dir(sweep_dir, index)
    info_file = tdir / TRIAL_FILE
    if not info_file.exists():
        n = len(list(Path(sweep_dir).glob("trial-*")))
        raise SweepError(
            f"{info_file} does not exist: {sweep_dir} has {n} trials (0..{n - 1}); "
            "prepare it with `perceiver-lit-sweep run SPEC --dir DIR`"
        )
    if is_done(sweep_dir, index) and not force:
        print(f"[sweep] trial {index}: done already, skipped")
        return 0
    info = json.loads(info_file.read_text())
    for stale in (DONE_FILE, FAILED_FILE, METRICS_FILE):
        (tdir / stale).unlink(missing_ok=True)
    cmd = _resolve_executable(info["command"])
    env = {**os.environ, TRIAL_DIR_ENV: str(tdir.resolve())}
    start = time.time()
    with open(tdir / LOG_FILE, "a") as log, _PreemptionWatch() as watch:  # append: a requeued trial goes on
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.run(
                cmd, cwd=info["cwd"], env=env, stdout=None if echo else log, stderr=None if echo else subprocess.STDOUT
            )
            rc = proc.returncode
        except FileNotFoundError as e:
            log.write(f"{e}\n")
            rc = 127
    status = {
        "returncode": rc,
        "seconds": round(time.time() - start, 2),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }
    if watch.signalled:
        # Slurm warned of the time limit / preemption: the trial saved a checkpoint and requeued itself, so it is
        # neither done nor failed; the requeued array task resumes it.
        print(f"[sweep] trial {index}: stopped by signal {watch.signalled} (requeue); not marked done", flush=True)
        return 128 + watch.signalled
    (tdir / (DONE_FILE if rc == 0 else FAILED_FILE)).write_text(json.dumps(status))
    word = "done" if rc == 0 else f"FAILED (exit {rc}; see {tdir / LOG_FILE})"
    print(f"[sweep] trial {index}: {word} in {status['seconds']:.1f}s  {info['params']}", flush=True)
    return rc


class _PreemptionWatch:
    """While a trial runs, SIGUSR1 (Slurm's `--signal=USR1@90` warning) must not kill this parent process: Slurm
    signals every process of the job step, so the trial itself gets it and checkpoints + requeues (Lightning's
    SLURM handling); we only remember that it came. A Python handler, not SIG_IGN, so the trial (exec'd) starts
    with the default disposition and installs its own."""

    def __enter__(self) -> _PreemptionWatch:
        self.signalled = 0
        self._old = None
        if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGUSR1, self._note)
        return self

    def _note(self, signum: int, frame: object) -> None:
        self.signalled = signum

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGUSR1, self._old)


def run_local(sweep_dir: str | Path, n_trials: int, echo: bool = False) -> dict[str, list[int]]:
    """Run every unfinished trial one after another; a failing trial does not stop the others."""
    result: dict[str, list[int]] = {"skipped": [], "done": [], "failed": []}
    for i in range(n_trials):
        if is_done(sweep_dir, i):
            result["skipped"].append(i)
            continue
        rc = run_trial(sweep_dir, i, echo=echo)
        result["done" if rc == 0 else "failed"].append(i)
    print(
        f"[sweep] {len(result['done'])} done, {len(result['failed'])} failed, "
        f"{len(result['skipped'])} skipped (finished before)"
    )
    return result


def array_spec(indices: list[int], max_parallel: int | None = None) -> str:
    """Slurm's --array value for these task ids, with runs collapsed: [0,1,2,5] -> '0-2,5' ('%K' caps parallelism)."""
    if not indices:
        raise SweepError("no trials left to submit")
    parts, start, prev = [], indices[0], indices[0]
    for i in indices[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if i is not None:
            start = prev = i
    return ",".join(parts) + (f"%{max_parallel}" if max_parallel else "")


def submit_slurm(
    sweep_dir: str | Path,
    n_trials: int,
    sbatch_script: str | Path = "sbatch/sweep.sbatch",
    max_parallel: int | None = None,
    extra: list[str] | None = None,
) -> str | None:
    """Submit the unfinished trials as one job array; task id i runs `perceiver-lit-sweep trial DIR i`.
    Returns the job id (None when nothing was left)."""
    sweep_dir = Path(sweep_dir).resolve()
    todo = [i for i in range(n_trials) if not is_done(sweep_dir, i)]
    if not todo:
        print(f"[sweep] all {n_trials} trials are done; nothing to submit")
        return None
    script = Path(sbatch_script)
    if not script.is_file():
        raise SweepError(f"sbatch script {script} not found (run from the repo root or pass --sbatch-script)")
    if shutil.which("sbatch") is None:
        raise SweepError("`sbatch` is not on PATH: --slurm needs a Slurm cluster")
    (sweep_dir / "slurm").mkdir(exist_ok=True)
    cmd = [
        "sbatch",
        "--parsable",
        f"--array={array_spec(todo, max_parallel)}",
        f"--output={sweep_dir / 'slurm' / '%A_%a.out'}",
        f"--export=ALL,SWEEP_DIR={sweep_dir}",
        *(extra or []),
        str(script),
        str(sweep_dir),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SweepError(f"sbatch failed ({' '.join(cmd)}):\n{out.stderr.strip()}")
    job = out.stdout.strip().split(";")[0]
    print(f"[sweep] submitted job array {job} with {len(todo)} trials: {array_spec(todo, max_parallel)}")
    return job
