"""`perceiver-lit-sweep`: run a W&B-format sweep spec without a W&B server.

    perceiver-lit-sweep run SPEC.yaml [--dir DIR] [--trials N] [--seed S] [--slurm] [-- ARGS...]   check that
                                         trial 0's command parses, expand, then run every unfinished trial (one
                                         subprocess each) or submit them as a Slurm job array
    perceiver-lit-sweep trial DIR I      run trial I of a prepared sweep (what each Slurm array task does)
    perceiver-lit-sweep report DIR [--out O] [--metric M] [--goal G]   report.csv, report.md and plots
    perceiver-lit-sweep show SPEC.yaml [--check] [-- ARGS...]   print the trials' commands without running anything

ARGS after `--` are appended to every trial's command (and kept in DIR/plan.json), e.g. a smaller budget:
    perceiver-lit-sweep run configs/sweeps/local_num_latents.yaml -- --trainer.max_steps=20

The same SPEC works with `wandb sweep SPEC.yaml` + `wandb agent` (see docs/sweeps.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from pathlib import Path

from perceiver_lit.sweeps.report import write_report
from perceiver_lit.sweeps.runner import check_first_trial, prepare, run_local, run_trial, submit_slurm, trial_command
from perceiver_lit.sweeps.spec import SweepError, expand, load_spec


def _default_dir(spec_path: str) -> Path:
    return Path("runs") / "sweeps" / Path(spec_path).stem


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="perceiver-lit-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="expand a sweep spec and run (or submit) its unfinished trials")
    r.add_argument("spec")
    r.add_argument("--dir", help="sweep directory (default: runs/sweeps/<spec name>)")
    r.add_argument("--trials", type=int, help="number of trials: required for random/bayes, caps a grid")
    r.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    r.add_argument("--slurm", action="store_true", help="submit a Slurm job array instead of running here")
    r.add_argument("--sbatch-script", default="sbatch/sweep.sbatch")
    r.add_argument("--max-parallel", type=int, help="Slurm: at most this many array tasks at once (%%K)")
    r.add_argument("--sbatch-arg", action="append", default=[], help="extra sbatch option, repeatable")
    r.add_argument("--echo", action="store_true", help="stream trial output here instead of trial-<i>/log.txt")
    r.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="do not parse trial 0's command with --print_config first",
    )
    t = sub.add_parser("trial", help="run trial I of a prepared sweep directory")
    t.add_argument("dir")
    t.add_argument("index", type=int)
    t.add_argument("--force", action="store_true", help="rerun even if it is done")
    t.add_argument("--echo", action="store_true")
    rep = sub.add_parser("report", help="collect trials into report.csv / report.md / plots")
    rep.add_argument("dir")
    rep.add_argument("--out", help="output directory (default: DIR)")
    rep.add_argument("--metric", help="metric to plot (default: the spec's metric.name)")
    rep.add_argument(
        "--goal",
        choices=("minimize", "maximize"),
        help="best trial by (default: the spec's goal for its metric; else minimize for a loss)",
    )
    s = sub.add_parser("show", help="print each trial's command")
    s.add_argument("spec")
    s.add_argument("--trials", type=int)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--check", action="store_true", help="also parse trial 0's command with --print_config")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []  # every trial's extra arguments
    argv = argv[: argv.index("--")] if "--" in argv else argv
    args, unknown = p.parse_known_args(argv)
    if unknown:
        p.error(
            f"unrecognized arguments: {' '.join(unknown)}"
            + (
                f"; arguments for every trial's command go after `--`: perceiver-lit-sweep {args.cmd} ... -- "
                f"{' '.join(unknown)}"
                if args.cmd in ("run", "show")
                else ""
            )
        )
    if extra and args.cmd not in ("run", "show"):
        p.error(
            f"`-- {' '.join(extra)}`: trial arguments are taken by `run` and `show` only (a prepared trial "
            "runs the command in its trial.json)"
        )
    warnings.simplefilter("always", UserWarning)
    try:
        return _run(args, extra)
    except SweepError as e:
        print(f"perceiver-lit-sweep: error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    if args.cmd == "run":
        spec = load_spec(args.spec)
        sweep_dir = Path(args.dir) if args.dir else _default_dir(args.spec)
        if args.check:
            check_first_trial(spec, extra)
        dirs = prepare(spec, sweep_dir, trials=args.trials, seed=args.seed, extra_args=extra)
        print(f"[sweep] {spec.source}: {spec.method}, {len(dirs)} trials in {sweep_dir}")
        if args.slurm:
            submit_slurm(sweep_dir, len(dirs), args.sbatch_script, args.max_parallel, args.sbatch_arg)
            return 0
        result = run_local(sweep_dir, len(dirs), echo=args.echo)
        return 1 if result["failed"] else 0
    if args.cmd == "trial":
        return run_trial(args.dir, args.index, force=args.force, echo=args.echo)
    if args.cmd == "report":
        # Imported here: `trial` (what every Slurm array task runs) stays free of torch/Lightning imports.
        from datamodules.optional import one_line_missing

        with one_line_missing("perceiver-lit-sweep report"):  # matplotlib for the plots
            rep = write_report(args.dir, args.out, args.metric, args.goal)
        print(rep["table"])
        print(f"[sweep] wrote {rep['csv']}, {rep['markdown']}" + "".join(f", {p}" for p in rep["plots"]))
        return 0
    if args.cmd == "show":
        spec = load_spec(args.spec)
        if args.check:
            check_first_trial(spec, extra)
        for i, params in enumerate(expand(spec, trials=args.trials, seed=args.seed)):
            print(f"# trial {i}: {json.dumps(params)}")
            print(shlex.join(trial_command(spec, params, None, i, extra)))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
