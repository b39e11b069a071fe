"""W&B sweep specs: load, check, and expand into concrete trials.

A spec is the YAML that `wandb sweep` takes (https://docs.wandb.ai/guides/sweeps/define-sweep-configuration):

    method: grid | random | bayes
    metric: {name: val/acc, goal: maximize}
    parameters:
      model.init_args.net.init_args.num_latents: {values: [32, 64, 128]}
      model.init_args.lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-2}
    command: [perceiver-lit, fit, --config, configs/local/perceiver.yaml, ${args}]

Without a W&B server we can expand `grid` (every combination) and `random` (N draws, seeded) ourselves. `bayes`
needs the server's model of past runs; we fall back to random draws over the same space, with a warning.
Parameters are flat LightningCLI keys; W&B's nested `parameters:` blocks are refused (use dotted keys instead).
"""

from __future__ import annotations

import itertools
import math
import random
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

METHODS = ("grid", "random", "bayes")
# W&B's default when a spec has no `command`.
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "log_uniform_values",
    "q_log_uniform",
    "q_log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
    "beta",
    "q_beta",
)


class SweepError(ValueError):
    """A sweep spec or sweep directory is not what we expected; the message names the file and the key."""


@dataclass
class SweepSpec:
    method: str
    parameters: dict[str, dict[str, Any]]
    command: list[str]
    metric: dict[str, str] = field(default_factory=dict)
    program: str | None = None
    name: str | None = None
    source: str = "<dict>"
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_name(self) -> str | None:
        return self.metric.get("name")

    @property
    def goal(self) -> str:
        return self.metric.get("goal", "minimize")


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep spec {path} does not exist")
    with open(path) as f:
        raw = yaml.safe_load(f)
    return parse_spec(raw, source=str(path))


def parse_spec(raw: Any, source: str = "<dict>") -> SweepSpec:
    if not isinstance(raw, dict):
        raise SweepError(f"{source}: a sweep spec is a mapping with method/metric/parameters/command")
    method = raw.get("method")
    if method not in METHODS:
        raise SweepError(f"{source}: `method` must be one of {METHODS}, got {method!r}")
    params = raw.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepError(f"{source}: `parameters` must be a non-empty mapping of LightningCLI keys to specs")
    for key, p in params.items():
        _check_param(source, key, p, method)
    metric = raw.get("metric") or {}
    if metric and ("name" not in metric or metric.get("goal", "minimize") not in ("minimize", "maximize")):
        raise SweepError(f"{source}: `metric` needs `name` and `goal: minimize|maximize`, got {metric!r}")
    command = raw.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise SweepError(f"{source}: `command` must be a list of strings, got {command!r}")
    if "${program}" in command and not raw.get("program"):
        raise SweepError(f"{source}: `command` uses ${{program}} but the spec has no `program`")
    return SweepSpec(
        method=method,
        parameters=dict(params),
        command=list(command),
        metric=dict(metric),
        program=raw.get("program"),
        name=raw.get("name"),
        source=source,
        raw=raw,
    )


def _check_param(source: str, key: str, p: Any, method: str) -> None:
    where = f"{source}: parameters.{key}"
    if not isinstance(p, dict):
        raise SweepError(f"{where}: expected a mapping such as {{values: [...]}}, got {p!r}")
    if "parameters" in p:
        raise SweepError(
            f"{where}: nested `parameters` are not supported; name each leaf by its dotted "
            f"LightningCLI key instead (e.g. {key}.init_args.x)"
        )
    if "value" in p or "values" in p:
        if "values" in p and (not isinstance(p["values"], list) or not p["values"]):
            raise SweepError(f"{where}: `values` must be a non-empty list")
        return
    dist = p.get("distribution", _infer_distribution(p))
    if dist not in DISTRIBUTIONS:
        raise SweepError(f"{where}: unknown distribution {dist!r}; expected one of {DISTRIBUTIONS}")
    if method == "grid":
        raise SweepError(f"{where}: a grid sweep needs discrete `values` (or `value`), not distribution {dist!r}")


def _infer_distribution(p: dict[str, Any]) -> str | None:
    # W&B's rule: min/max given as ints -> int_uniform, as floats -> uniform.
    if "min" in p and "max" in p:
        return "int_uniform" if isinstance(p["min"], int) and isinstance(p["max"], int) else "uniform"
    return None


def expand(spec: SweepSpec, trials: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The concrete trials of a sweep: a list of {key: value} in the order the spec names the keys."""
    if spec.method == "grid":
        keys = list(spec.parameters)
        choices = [_discrete(spec.parameters[k]) for k in keys]
        grid = [dict(zip(keys, combo)) for combo in itertools.product(*choices)]
        return grid[:trials] if trials else grid
    if spec.method == "bayes":
        warnings.warn(
            f"{spec.source}: method `bayes` needs a W&B sweep server (`wandb sweep` + `wandb agent`); "
            "running it locally as random search over the same space",
            stacklevel=2,
        )
    if not trials:
        raise SweepError(f"{spec.source}: method `{spec.method}` draws trials at random; say how many with --trials N")
    rng = random.Random(seed)
    return [{k: sample(p, rng) for k, p in spec.parameters.items()} for _ in range(trials)]


def _discrete(p: dict[str, Any]) -> list[Any]:
    return [p["value"]] if "value" in p else list(p["values"])


def sample(p: dict[str, Any], rng: random.Random) -> Any:
    """One draw from a W&B parameter spec (same parametrisation as W&B's sweep controller)."""
    if "value" in p:
        return p["value"]
    dist = p.get("distribution", "categorical" if "values" in p else _infer_distribution(p))
    lo, hi = p.get("min"), p.get("max")
    q = p.get("q", 1)
    mu, sigma = p.get("mu", 0.0), p.get("sigma", 1.0)
    if dist == "constant":
        return p["value"]
    if dist == "categorical":
        probs = p.get("probabilities")
        return rng.choices(p["values"], weights=probs)[0] if probs else rng.choice(p["values"])
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "q_uniform":
        return _quantize(rng.uniform(lo, hi), q)
    if dist == "log_uniform":  # min/max are natural-log exponents
        return math.exp(rng.uniform(lo, hi))
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist == "q_log_uniform":
        return _quantize(math.exp(rng.uniform(lo, hi)), q)
    if dist == "q_log_uniform_values":
        return _quantize(math.exp(rng.uniform(math.log(lo), math.log(hi))), q)
    if dist == "inv_log_uniform":
        return 1.0 / math.exp(rng.uniform(lo, hi))
    if dist == "inv_log_uniform_values":
        return 1.0 / math.exp(rng.uniform(math.log(1.0 / hi), math.log(1.0 / lo)))
    if dist == "normal":
        return rng.gauss(mu, sigma)
    if dist == "q_normal":
        return _quantize(rng.gauss(mu, sigma), q)
    if dist == "log_normal":
        return math.exp(rng.gauss(mu, sigma))
    if dist == "q_log_normal":
        return _quantize(math.exp(rng.gauss(mu, sigma)), q)
    if dist in ("beta", "q_beta"):
        v = rng.betavariate(p.get("a", 1.0), p.get("b", 1.0))
        return _quantize(v, q) if dist == "q_beta" else v
    raise SweepError(f"unsupported distribution {dist!r}")


def _quantize(v: float, q: float) -> float | int:
    r = round(v / q) * q
    return int(r) if isinstance(q, int) else r


def format_args(params: dict[str, Any]) -> list[str]:
    """`--key=value` exactly as W&B's agent writes `${args}` (Python `str` of the value), so a spec behaves the
    same locally and under `wandb agent`. Consequence: write None as the string "null" in a spec (jsonargparse reads
    `null` as None but `None` as a string)."""
    return [f"--{k}={v}" for k, v in params.items()]


def build_command(spec: SweepSpec, params: dict[str, Any]) -> list[str]:
    """Fill W&B's command macros: ${env} (dropped), ${interpreter}, ${program}, ${args}, ${args_no_hyphens},
    ${args_no_equals}, ${args_json}."""
    out: list[str] = []
    for tok in spec.command:
        if tok == "${env}":
            continue
        elif tok == "${interpreter}":
            out.append(sys.executable)
        elif tok == "${program}":
            out.append(str(spec.program))
        elif tok == "${args}":
            out += format_args(params)
        elif tok == "${args_no_hyphens}":
            out += [a[2:] for a in format_args(params)]
        elif tok == "${args_no_equals}":
            for k, v in params.items():
                out += [f"--{k}", str(v)]
        elif tok == "${args_json}":
            import json

            out.append(json.dumps(params))
        else:
            out.append(tok)
    return out
