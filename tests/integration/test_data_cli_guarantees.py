"""Data and model guarantees of issue 20, driven through `perceiver-lit` / `perceiver-lit-shards` as a user runs them:
out-of-range labels, skipped-sample reports in eval, text files the writer cannot read, a truncated eval shard,
training by steps with a schedule in epochs, and model sizes below 1."""

from __future__ import annotations

import os

import pytest

from tests.fixtures.training import fashion_data, run_cli, tiny_perceiver, write_config

pytestmark = pytest.mark.integration

QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.yaml")


def _fashion_args(shards) -> list[str]:
    return ["--data.init_args.train_urls", shards.train_urls, "--data.init_args.val_urls", shards.test_urls,
            "--data.init_args.test_urls", shards.test_urls]


# ------------------------------------------------------------------------------------ 20.7: training by steps
def test_quickstart_trains_by_steps_with_a_schedule_in_epochs(fashion_shards, tmp_path):
    """`--trainer.max_epochs -1 --trainer.max_steps N` with the quickstart's warmup_epochs: the loader has a length,
    so the warm-up is converted to steps from it (it used to stop with 'the train loader has no length')."""
    cli = run_cli(["fit", "--config", os.path.abspath(QUICKSTART), *_fashion_args(fashion_shards),
                   "--trainer.max_epochs", "-1", "--trainer.max_steps", "2", "--trainer.callbacks", "[]",
                   "--model.init_args.warmup_epochs", "1", "--trainer.logger", "false",
                   "--trainer.enable_progress_bar", "false"], cwd=tmp_path)
    assert cli.trainer.global_step == 2
    schedule = cli.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert schedule.warmup_steps == fashion_shards.num_train // 64  # 1 epoch = 6 batches of 64
    assert schedule.total_steps == 2
