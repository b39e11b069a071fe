"""Shared test setup. Fixtures live in tests/fixtures/<area>.py, one module per area, registered here."""

import os

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
