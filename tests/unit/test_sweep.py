"""perceiver-lit-sweep: spec expansion, W&B-identical args, local runner with resume, Slurm array ids, report."""

import csv
import json
import math
import signal
from pathlib import Path

import pytest
import yaml

from perceiver_lit.sweeps.cli import main
from perceiver_lit.sweeps.report import write_report
from perceiver_lit.sweeps.runner import array_spec, prepare, run_local, run_trial, trial_command
from perceiver_lit.sweeps.spec import SweepError, build_command, expand, format_args, parse_spec

NET = "model.init_args.net.init_args"


def spec(method="grid", **params):
    return parse_spec(
        {
            "method": method,
            "metric": {"name": "val/acc", "goal": "maximize"},
            "parameters": params
            or {f"{NET}.num_latents": {"values": [8, 16, 32]}, f"{NET}.num_cross_attends": {"values": [1, 2]}},
            "command": ["perceiver-lit", "fit", "--config", "base.yaml", "${args}"],
        }
    )


def test_grid_is_every_combination_in_spec_order():
    trials = expand(spec())
    assert len(trials) == 6
    assert trials[0] == {f"{NET}.num_latents": 8, f"{NET}.num_cross_attends": 1}
    assert trials[-1] == {f"{NET}.num_latents": 32, f"{NET}.num_cross_attends": 2}
    assert len({json.dumps(t, sort_keys=True) for t in trials}) == 6
    assert list(trials[3]) == [f"{NET}.num_latents", f"{NET}.num_cross_attends"]


def test_random_draws_are_seeded_and_in_range():
    s = spec(
        "random",
        **{
            "model.init_args.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            f"{NET}.num_latents": {"distribution": "int_uniform", "min": 4, "max": 64},
            f"{NET}.share_weights": {"values": [True, False]},
            "model.init_args.weight_decay": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25},
        },
    )
    a, b, c = expand(s, trials=40, seed=1), expand(s, trials=40, seed=1), expand(s, trials=40, seed=2)
    assert a == b and a != c and len(a) == 40
    lrs = [t["model.init_args.lr"] for t in a]
    assert all(1e-4 <= x <= 1e-2 for x in lrs)
    assert min(lrs) < 1e-3 < max(lrs)  # log-uniform: both decades are visited
    assert all(isinstance(t[f"{NET}.num_latents"], int) and 4 <= t[f"{NET}.num_latents"] <= 64 for t in a)
    assert {t[f"{NET}.share_weights"] for t in a} == {True, False}
    assert {t["model.init_args.weight_decay"] for t in a} <= {0, 0.25, 0.5, 0.75, 1.0}


def test_random_needs_trials_and_bayes_falls_back_with_warning():
    with pytest.raises(SweepError, match="--trials"):
        expand(spec("random"))
    with pytest.warns(UserWarning, match="wandb agent"):
        assert len(expand(spec("bayes"), trials=3)) == 3


def test_bad_specs_name_the_key():
    with pytest.raises(SweepError, match="grid sweep needs discrete"):
        parse_spec({"method": "grid", "parameters": {"a.b": {"min": 0.0, "max": 1.0}}})
    with pytest.raises(SweepError, match="nested `parameters`"):
        parse_spec({"method": "random", "parameters": {"a": {"parameters": {"b": {"value": 1}}}}})
    with pytest.raises(SweepError, match="method"):
        parse_spec({"method": "hyperband", "parameters": {"a": {"value": 1}}})


def test_args_are_formatted_exactly_like_wandb_agent():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    params = {
        f"{NET}.num_latents": 64,
        "data.init_args.permute_seed": "null",
        "x.flag": True,
        "x.lst": [1, 2],
        "model.init_args.lr": 0.001,
    }
    ours = format_args(params)
    theirs = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args"]
    assert ours == theirs
    cmd = build_command(spec(), params)
    assert cmd[:4] == ["perceiver-lit", "fit", "--config", "base.yaml"] and cmd[4:] == ours


def test_perceiver_lit_trials_get_their_own_root_dir_and_metrics_callback(tmp_path):
    cmd = trial_command(spec(), {f"{NET}.num_latents": 8}, tmp_path / "trial-0")
    assert cmd[-2] == f"--trainer.default_root_dir={tmp_path / 'trial-0'}"
    assert cmd[-1] == "--trainer.callbacks+=perceiver_lit.sweeps.metrics.TrialMetrics"


def test_array_spec_collapses_runs():
    assert array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert array_spec([3], max_parallel=2) == "3%2"


# A stand-in trial program: records that it ran, fails for x == 2 until `allow` exists, writes metrics.json where
# the runner says (the same contract TrialMetrics follows).
PROGRAM = """
import json, os, sys
from pathlib import Path
args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
d = Path(os.environ["PERCEIVER_LIT_TRIAL_DIR"])
with open(d / "runs.txt", "a") as f:
    f.write("ran\\n")
x = float(args["x"])
if x == 2 and not (d.parent / "allow").exists():
    sys.exit(3)
(d / "metrics.json").write_text(json.dumps({"metrics": {"val/acc": 1 - (x - 1.5) ** 2, "val/loss": x}}))
"""


def _program_spec(tmp_path):
    (tmp_path / "prog.py").write_text(PROGRAM)
    return {
        "method": "grid",
        "program": str(tmp_path / "prog.py"),
        "metric": {"name": "val/acc", "goal": "maximize"},
        "parameters": {"x": {"values": [0, 1, 2]}, "mode": {"values": ["a", "b"]}},
        "command": ["${interpreter}", "${program}", "${args}"],
    }


def test_resumed_sweep_skips_finished_trials(tmp_path, capsys):
    raw = _program_spec(tmp_path)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    sweep_dir = tmp_path / "sw"
    assert main(["run", str(tmp_path / "s.yaml"), "--dir", str(sweep_dir)]) == 1  # two trials fail (x == 2)
    done = sorted(int(p.parent.name.split("-")[1]) for p in sweep_dir.glob("trial-*/done"))
    failed = sorted(int(p.parent.name.split("-")[1]) for p in sweep_dir.glob("trial-*/failed"))
    assert done == [0, 1, 2, 3] and failed == [4, 5]
    info = json.loads((sweep_dir / "trial-4" / "trial.json").read_text())
    assert info["params"] == {"x": 2, "mode": "a"} and info["command"][-2:] == ["--x=2", "--mode=a"]

    (sweep_dir / "allow").write_text("")
    result = run_local(sweep_dir, 6)
    assert result == {"skipped": [0, 1, 2, 3], "done": [4, 5], "failed": []}
    runs = {i: (sweep_dir / f"trial-{i}" / "runs.txt").read_text().count("ran") for i in range(6)}
    assert runs == {0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 2}
    assert not list(sweep_dir.glob("trial-*/failed"))
    # Running it yet again runs nothing; a different spec in the same dir is refused.
    assert main(["run", str(tmp_path / "s.yaml"), "--dir", str(sweep_dir)]) == 0
    assert (sweep_dir / "trial-0" / "runs.txt").read_text().count("ran") == 1
    raw["parameters"]["x"]["values"] = [5]
    with pytest.raises(SweepError, match="another sweep"):
        prepare(parse_spec(raw), sweep_dir)


def test_a_trial_warned_by_slurm_is_not_marked_done(tmp_path):
    # Slurm's --signal=USR1@90 reaches every process of the step; here the trial sends it to its parent (the
    # runner), as if Slurm had, then exits 0 after "checkpointing". The runner must survive and leave the trial
    # unfinished, so the requeued array task runs it again.
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import os, signal, sys\nfrom pathlib import Path\n"
        "if not Path(sys.argv[1]).exists():\n    os.kill(os.getppid(), signal.SIGUSR1)\n"
    )
    spec = parse_spec(
        {
            "method": "grid",
            "parameters": {"x": {"values": [1]}},
            "command": ["${interpreter}", str(prog), str(tmp_path / "resumed")],
        }
    )
    prepare(spec, tmp_path / "sw")
    assert run_trial(tmp_path / "sw", 0) == 128 + signal.SIGUSR1
    assert not (tmp_path / "sw" / "trial-0" / "done").exists()
    (tmp_path / "resumed").write_text("")
    assert run_trial(tmp_path / "sw", 0) == 0 and (tmp_path / "sw" / "trial-0" / "done").exists()
    assert (tmp_path / "sw" / "trial-0" / "log.txt").read_text().count("$ ") == 2  # the log is appended


def test_random_sweep_resumes_the_same_draws(tmp_path):
    raw = {
        "method": "random",
        "parameters": {"x": {"distribution": "uniform", "min": 0.0, "max": 1.0}},
        "command": ["true", "${args}"],
    }
    dirs = prepare(parse_spec(raw), tmp_path, trials=3, seed=5)
    first = [json.loads((d / "trial.json").read_text())["params"] for d in dirs]
    dirs = prepare(parse_spec(raw), tmp_path, trials=3, seed=99)  # the plan on disk wins over a new seed
    assert [json.loads((d / "trial.json").read_text())["params"] for d in dirs] == first


def _fake_trial(d: Path, i: int, params: dict, metrics: dict | None, status: str = "done"):
    t = d / f"trial-{i}"
    t.mkdir(parents=True)
    (t / "trial.json").write_text(json.dumps({"index": i, "params": params, "command": ["x"], "cwd": "."}))
    if metrics is not None:
        (t / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    (t / status).write_text("{}")


def main_report(d: Path, out: Path, *options: str) -> str:
    assert main(["report", str(d), "--out", str(out), *options]) == 0
    return (out / "report.md").read_text()


def test_report_from_trial_dirs(tmp_path):
    d = tmp_path / "sw"
    (d).mkdir()
    (d / "plan.json").write_text(json.dumps({"metric": {"name": "val/acc", "goal": "maximize"}}))
    lat = f"{NET}.num_latents"
    for i, (n, pos, acc) in enumerate(
        [
            (8, "fourier", 0.70),
            (16, "fourier", 0.78),
            (32, "fourier", 0.81),
            (8, "learned", 0.60),
            (16, "learned", 0.65),
        ]
    ):
        _fake_trial(d, i, {lat: n, "pos": pos}, {"val/acc": acc, "val/loss": 1 - acc, "train/loss_step": 0.1})
    _fake_trial(d, 5, {lat: 32, "pos": "learned"}, None, status="failed")
    rep = write_report(d)
    rows = list(csv.DictReader(open(d / "report.csv")))
    assert [r["trial"] for r in rows] == [str(i) for i in range(6)]
    assert rows[2][lat] == "32" and math.isclose(float(rows[2]["val/acc"]), 0.81)
    assert rows[5]["status"] == "failed" and rows[5]["val/acc"] == ""
    md = (d / "report.md").read_text()
    assert "| num_latents | pos | val/acc |" in md
    assert "Best (maximize `val/acc`): trial 2" in md
    names = sorted(p.name for p in rep["plots"])
    assert names == ["val_acc_vs_num_latents.png", "val_acc_vs_pos.png"]
    for p in rep["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    # Another metric: a loss is minimized unless --goal says otherwise.
    assert "Best (minimize `val/loss`): trial 2," in main_report(d, tmp_path / "r1", "--metric", "val/loss")
    assert "Best (maximize `val/loss`): trial 3," in main_report(
        d, tmp_path / "r2", "--metric", "val/loss", "--goal", "maximize"
    )
    with pytest.raises(SweepError, match=r"metric 'val/accuracy' was logged by no trial .*logged: .*val/acc"):
        write_report(d, metric="val/accuracy")  # a typo no longer gives a report without a best


def test_trial_index_out_of_range_is_a_clear_error(tmp_path, capsys):
    prepare(parse_spec({"method": "grid", "parameters": {"x": {"values": [1]}}, "command": ["true"]}), tmp_path)
    assert main(["trial", str(tmp_path), "4"]) == 2
    assert "has 1 trials (0..0)" in capsys.readouterr().err


def test_a_misspelled_parameter_fails_before_any_trial_runs(tmp_path, capsys):
    """run (and show --check) parse trial 0's perceiver-lit command with --print_config first."""
    from tests.fixtures.training import tiny_perceiver, write_config

    cfg = write_config(
        tmp_path,
        {
            "model": tiny_perceiver(),
            "data": {"class_path": "datamodules.image.FashionMNISTDataModule", "init_args": {"batch_size": 4}},
        },
        "exp.yaml",
    )

    def spec(name: str) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            json.dumps(
                {
                    "method": "grid",
                    "parameters": {f"model.init_args.net.init_args.{name}": {"values": [4, 8]}},
                    "command": ["${interpreter}", "-m", "perceiver_lit.cli", "fit", "--config", cfg, "${args}"],
                }
            )
        )
        return str(path)

    assert main(["run", spec("num_latentz"), "--dir", str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err
    assert "trial 0's command does not parse" in err and "num_latentz" in err
    assert not (tmp_path / "sw").exists()  # nothing prepared, nothing run
    assert main(["show", spec("num_latents"), "--check"]) == 0
    assert "num_latents=4" in capsys.readouterr().out


# ---------------------------------------------------------------------- arguments after `--`, trial run names
def _write_spec(tmp_path, **extra) -> str:
    path = tmp_path / "num_latents.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "method": "grid",
                "parameters": {f"{NET}.num_latents": {"values": [8, 16]}},
                "command": ["perceiver-lit", "fit", "--config", "base.yaml", "${args}"],
                **extra,
            }
        )
    )
    return str(path)


def test_show_appends_the_arguments_after_the_double_dash_to_every_trial(tmp_path, capsys):
    spec_file = _write_spec(tmp_path)
    assert main(["show", spec_file, "--", "--trainer.max_steps=20", "--data.init_args.batch_size=8"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(commands) == 2
    for i, line in enumerate(commands):
        assert line.endswith("--trainer.max_steps=20 --data.init_args.batch_size=8"), line
        assert f"--name=num_latents-trial-{i} --wandb.group=num_latents" in line
    # Without `--` argparse cannot tell them from its own options: the error says where they go.
    with pytest.raises(SystemExit) as exit_info:
        main(["show", spec_file, "--trainer.max_steps=20"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --trainer.max_steps=20" in err and "go after `--`" in err


def test_trials_are_named_after_the_trial_and_grouped_by_the_sweep(tmp_path):
    s = parse_spec(
        {
            "name": "lat",
            "method": "grid",
            "parameters": {f"{NET}.num_latents": {"values": [8]}},
            "command": ["perceiver-lit", "fit", "--config", "base.yaml", "${args}"],
        }
    )
    cmd = trial_command(s, {f"{NET}.num_latents": 8}, tmp_path / "trial-3", 3, ["--trainer.max_steps=5"])
    assert cmd[-5:-2] == ["--name=lat-trial-3", "--wandb.group=lat", "--trainer.max_steps=5"]
    # A group the spec (or the user, after `--`) names is kept.
    s.command.insert(4, "--wandb.group=mine")
    assert not any(a == "--wandb.group=lat" for a in trial_command(s, {}, tmp_path, 0))
    assert not any(
        a == "--wandb.group=lat" for a in trial_command(parse_spec(s.raw), {}, tmp_path, 0, ["--wandb.group=theirs"])
    )


def test_run_and_slurm_record_the_extra_arguments_in_plan_and_trials(tmp_path, capsys):
    """`run --slurm` prepares the sweep dir (plan.json, trial.json: what each array task runs) before it submits;
    an sbatch script that is not there stops it right after, so no job is ever submitted here."""
    spec_file = _write_spec(tmp_path)
    sweep_dir = tmp_path / "sw"
    rc = main(
        [
            "run",
            spec_file,
            "--dir",
            str(sweep_dir),
            "--no-check",
            "--slurm",
            "--sbatch-script",
            str(tmp_path / "missing.sbatch"),
            "--",
            "--trainer.max_steps=20",
        ]
    )
    assert rc == 2 and "sbatch script" in capsys.readouterr().err
    plan = json.loads((sweep_dir / "plan.json").read_text())
    assert plan["extra_args"] == ["--trainer.max_steps=20"]
    for i in range(2):
        cmd = json.loads((sweep_dir / f"trial-{i}" / "trial.json").read_text())["command"]
        assert cmd[-3] == "--trainer.max_steps=20" and f"--name=num_latents-trial-{i}" in cmd
    # Resuming without arguments reuses the plan's; different ones are refused (finished trials ran with these).
    dirs = prepare(parse_spec(yaml.safe_load(open(spec_file)), source=spec_file), sweep_dir)
    assert len(dirs) == 2
    with pytest.raises(
        SweepError,
        match=r"planned with the trial arguments --trainer.max_steps=20 after `--`, "
        r"not --trainer.max_steps=50",
    ):
        prepare(
            parse_spec(yaml.safe_load(open(spec_file)), source=spec_file),
            sweep_dir,
            extra_args=["--trainer.max_steps=50"],
        )
