"""Sweeps in W&B's format without a W&B server: expand (spec.py), run locally or on Slurm (runner.py), collect
(report.py); metrics.py holds TrialMetrics, the callback that leaves each trial's final metrics in metrics.json.
`perceiver-lit-sweep` (cli.py) is the command line. Nothing here but metrics.py imports torch or
Lightning, so a Slurm array task starts fast."""

from perceiver_lit.sweeps.spec import SweepError, SweepSpec, build_command, expand, load_spec, parse_spec

__all__ = ["SweepError", "SweepSpec", "build_command", "expand", "load_spec", "parse_spec"]
