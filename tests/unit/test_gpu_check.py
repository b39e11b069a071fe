"""benchmarks/gpu_check.sh cannot run here (no GPU), so check on CPU what can break it: the script parses, and every
command it runs exists and accepts the arguments it is given (its dry run lists them)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    """Each command the script would run, as argv after `python -m` (its dry run prints them shell-quoted)."""
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    out = subprocess.run(
        ["bash", str(SCRIPT)],
        env={"GPU_CHECK_DRY_RUN": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cmds = [shlex.split(line)[1:] for line in out.splitlines() if line.startswith("CMD ")]
    assert cmds and all(c[1] == "-m" for c in cmds), out  # every step is `$PYTHON -m <module> ...`
    return [c[2:] for c in cmds]


def test_every_trainer_preset_runs_through_the_cli_and_each_command_line_parses(commands, capsys) -> None:
    from tests.fixtures.training import run_cli

    fits = [c[1:] for c in commands if c[0] == "perceiver_lit.cli"]
    presets = {Path(c[c.index("--config", c.index("--config") + 1) + 1]).stem for c in fits}
    assert presets == {p.stem for p in (ROOT / "configs" / "trainer").glob("*.yaml")}  # every preset, none missed
    for args in fits:
        with pytest.raises(SystemExit) as done:  # --print_config parses configs and flags, prints, and exits
            run_cli([*args, "--print_config"], cwd=ROOT)
        assert done.value.code in (0, None), args
        assert "class_path: perceiver_lit.tasks.MaskedByteModelling" in capsys.readouterr().out


def test_the_benchmark_modules_accept_the_flags_the_script_passes(commands, capsys) -> None:
    import importlib

    for module, *args in commands:
        if not module.startswith("benchmarks."):
            continue
        main = importlib.import_module(module).main
        with pytest.raises(SystemExit) as done:
            main(["--help"])
        assert done.value.code == 0
        usage = capsys.readouterr().out
        for flag in (a for a in args if a.startswith("--")):
            assert f"{flag} " in usage or f"{flag}\n" in usage, f"{module} has no {flag}"


def test_the_pinned_memory_tests_it_runs_exist_and_the_shard_step_works(commands, tmp_path) -> None:
    pytest_args = next(c for c in commands if c[0] == "pytest")
    test_file = ROOT / pytest_args[1]
    keyword = pytest_args[pytest_args.index("-k") + 1]
    names = [line.split("(")[0][4:] for line in test_file.read_text().splitlines() if line.startswith("def test_")]
    assert "test_mix_with_pinning_pins_every_tensor" in [n for n in names if keyword in n]

    from datamodules.shards.cli import main as shards_main

    shards = next(c for c in commands if c[0] == "datamodules.shards.cli")[1:]
    shards[shards.index("--out") + 1] = str(tmp_path)
    shards_main(shards)
    assert len(list(tmp_path.glob("train-*.tar"))) >= 4 and len(list(tmp_path.glob("val-*.tar"))) >= 4


def test_it_keeps_to_its_time_budget_and_reports_every_step(commands, tmp_path) -> None:
    """With the budget spent, no step runs: each is reported NOT RUN in the table, and the script fails."""
    proc = subprocess.run(
        ["bash", str(SCRIPT)],
        env={"GPU_CHECK_OUT": str(tmp_path), "BUDGET_S": "0", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = [r for r in (tmp_path / "gpu_check.md").read_text().splitlines() if r.startswith("| ") and "NOT RUN" in r]
    assert len(rows) == len(commands)
