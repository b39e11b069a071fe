"""Shared test setup. Fixtures live in tests/fixtures/<area>.py, one module per area, registered here."""

import os
import sys

import pytest

# Never reach a W&B server from tests; never let a hub download be attempted.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "tests.fixtures.data",
    "tests.fixtures.slurm",
    "tests.fixtures.training",
]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # wandb exports WANDB_SERVICE once a test starts W&B in this process; a later subprocess (a CLI run, a DDP rank,
    # a Slurm daemon and its jobs) would then log through this process's service, where a resumed run's id is still
    # "in use". Every process a test starts gets its own service, as a user's commands do.
    os.environ.pop("WANDB_SERVICE", None)
    # An in-process CLI run leaves its W&B run open (a user's command ends its process, and wandb finishes the run
    # at exit); a later test's WandbLogger would then reuse that run and write nothing under its own directory.
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
