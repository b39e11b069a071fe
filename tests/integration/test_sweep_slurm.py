"""A sweep as a real Slurm job array (tests/fixtures/slurm.py): `perceiver-lit-sweep run --slurm` submits the
unfinished trials with sbatch/sweep.sbatch, and array task i runs trial i (`perceiver-lit-sweep trial DIR i`)."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from perceiver_lit.sweeps.cli import main as sweep_main

pytestmark = [pytest.mark.integration, pytest.mark.slurm]
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "sbatch" / "sweep.sbatch"

# Each trial records which array task ran it, and where.
PROGRAM = """
import json, os, sys
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
d = Path(os.environ["PERCEIVER_LIT_TRIAL_DIR"])
(d / "ran.json").write_text(json.dumps({"task": os.environ.get("SLURM_ARRAY_TASK_ID"),
                                        "job": os.environ.get("SLURM_ARRAY_JOB_ID"), "x": args["x"]}))
(d / "metrics.json").write_text(json.dumps({"metrics": {"val/acc1": float(args["x"]) / 10}}))
"""


def test_slurm_array_task_ids_map_to_trials(slurm_cluster, tmp_path, monkeypatch):
    if not SCRIPT.is_file():
        pytest.fail(f"{SCRIPT} is missing (the cluster pieces provide it)")
    (tmp_path / "prog.py").write_text(PROGRAM)
    spec = tmp_path / "s.yaml"
    spec.write_text(
        json.dumps(
            {
                "method": "grid",
                "program": str(tmp_path / "prog.py"),
                "parameters": {"x": {"values": [10, 20, 30, 40]}},
                "command": ["${interpreter}", "${program}", "${args}"],
            }
        )
    )
    sweep_dir = tmp_path / "sweep"
    # The jobs must find this venv's perceiver-lit-sweep and the test cluster (SLURM_CONF) in their environment.
    for k, v in slurm_cluster.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("VENV", str(ROOT / ".venv"))
    monkeypatch.chdir(ROOT)
    # Trial 2 finished before: a resumed sweep submits only 0, 1, 3.
    from perceiver_lit.sweeps.runner import prepare
    from perceiver_lit.sweeps.spec import load_spec

    prepare(load_spec(spec), sweep_dir)
    (sweep_dir / "trial-2" / "done").write_text("{}")

    # The script's #SBATCH defaults are for a GPU cluster; the test cluster has partition `debug` and no GPUs.
    run = [
        "run",
        str(spec),
        "--dir",
        str(sweep_dir),
        "--slurm",
        f"--sbatch-arg=--partition={slurm_cluster.partition}",
        "--sbatch-arg=--gpus-per-node=0",
        "--sbatch-arg=--cpus-per-task=1",
        "--sbatch-arg=--time=5",
    ]
    assert sweep_main(run) == 0
    deadline = time.monotonic() + 120
    want = [sweep_dir / f"trial-{i}" / "ran.json" for i in (0, 1, 3)]
    while not all(p.exists() and (p.parent / "done").exists() for p in want):
        failed = list(sweep_dir.glob("trial-*/failed"))
        assert not failed, [p.parent.joinpath("log.txt").read_text()[-2000:] for p in failed]
        if time.monotonic() > deadline:
            outs = "\n".join(p.read_text()[-1500:] for p in (sweep_dir / "slurm").glob("*.out"))
            raise AssertionError(f"array tasks did not finish:\n{outs}\n{slurm_cluster.logs()}")
        time.sleep(0.5)
    runs = {i: json.loads((sweep_dir / f"trial-{i}" / "ran.json").read_text()) for i in (0, 1, 3)}
    assert {i: r["task"] for i, r in runs.items()} == {0: "0", 1: "1", 3: "3"}
    assert {i: r["x"] for i, r in runs.items()} == {0: "10", 1: "20", 3: "40"}
    assert len({r["job"] for r in runs.values()}) == 1  # one job array
    assert not (sweep_dir / "trial-2" / "ran.json").exists()
    done = json.loads((sweep_dir / "trial-3" / "done").read_text())
    assert done["slurm_array_task"] == "3" and done["returncode"] == 0
    # Everything finished: running the sweep again submits nothing.
    assert sweep_main(run) == 0
    assert len(list((sweep_dir / "slurm").glob("*.out"))) == 3
