"""Every sweep in configs/sweeps/ is valid W&B sweep YAML whose command the real `perceiver-lit` CLI accepts:
the base config exists, and a trial's `--key=value` arguments parse (`--print_config`, in-process, nothing is
built) and land at their keys in the resolved config."""

import contextlib
import glob
import io
import os
import sys

import pytest
import yaml

from perceiver_lit.cli import PerceiverCLI
from perceiver_lit.sweeps.spec import build_command, expand, load_spec

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEPS = sorted(glob.glob(os.path.join(ROOT, "configs", "sweeps", "*.yaml")))
ABLATIONS = [
    "num_latents",
    "latent_width",
    "cross_attends",
    "self_attends",
    "weight_sharing",
    "fourier",
    "positions",
    "permutation",
]


def test_every_ablation_has_a_local_and_an_imagenet_sweep():
    names = {os.path.basename(p)[:-5] for p in SWEEPS}
    for ablation in ABLATIONS:
        assert f"local_{ablation}" in names and f"imagenet_{ablation}" in names, ablation
    assert any(n.startswith("audioset_") for n in names) and any(n.startswith("modelnet40_") for n in names)


def _lookup(tree, key):
    for part in key.split("."):
        assert isinstance(tree, dict) and part in tree, f"{part!r} of {key} not in the resolved config"
        tree = tree[part]
    return tree


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: os.path.basename(p)[:-5])
def test_sweep_command_parses_with_the_real_cli(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["perceiver-lit"])  # pytest's own arguments are not the CLI's
    spec = load_spec(path)
    cmd = build_command(spec, {})
    assert cmd[:2] == ["perceiver-lit", "fit"] and "${args}" in spec.command
    base = cmd[cmd.index("--config") + 1]
    assert os.path.isfile(base), f"{path}: base config {base} does not exist"
    trials = expand(spec, trials=None if spec.method == "grid" else 2)
    params = trials[-1]  # the last grid point: the far end of every swept range
    assert params and set(params) == set(spec.parameters), (params, spec.parameters)  # never an empty check
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        PerceiverCLI(args=build_command(spec, params)[1:] + ["--print_config"])
    assert exit_info.value.code in (0, None), f"{path}: the CLI refused {params}"
    resolved = yaml.safe_load(out.getvalue())
    for key, value in params.items():
        expected = None if value == "null" else value
        got = _lookup(resolved, key)
        assert got == expected or (isinstance(got, list) and got == list(expected)), (key, got, expected)
