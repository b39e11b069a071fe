"""The distribution ships both packages and every console script."""

import importlib.metadata as md


def test_console_scripts_are_registered():
    eps = {ep.name: ep.value for ep in md.entry_points(group="console_scripts") if ep.name.startswith("perceiver-lit")}
    assert eps["perceiver-lit"] == "perceiver_lit.cli:main"
    assert eps["perceiver-lit-shards"] == "datamodules.shards.cli:main"
    assert eps["perceiver-lit-convert"] == "perceiver_lit.convert:main"
    assert eps["perceiver-lit-sweep"] == "perceiver_lit.sweeps.cli:main"


def test_model_code_does_not_import_lightning():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "perceiver_lit" / "models"
    offenders = [
        p.name
        for p in root.glob("*.py")
        if any(w in p.read_text() for w in ("import lightning", "from lightning", "pytorch_lightning", "datamodules"))
    ]
    assert offenders == [], f"model code must stay pure torch: {offenders}"
