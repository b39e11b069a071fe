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


# ------------------------------------------------------------------------------------- 20.8: model sizes below 1
@pytest.mark.parametrize("override, field, got", [
    ("net.init_args.num_latents=0", "model.init_args.net.init_args.num_latents", "0"),
    ("net.init_args.num_latents=-3", "model.init_args.net.init_args.num_latents", "-3"),
    ("net.init_args.latent_dim=0", "model.init_args.net.init_args.latent_dim", "0"),
    ("net.init_args.num_self_attention_heads=0", "model.init_args.net.init_args.num_self_attention_heads", "0"),
    ("net.init_args.adapter.init_args.num_frequency_bands=-1",
     "model.init_args.net.init_args.adapter.init_args.num_frequency_bands", "-1"),
])
def test_model_sizes_below_the_minimum_fail_naming_the_field(fashion_shards, tmp_path, override, field, got):
    """num_latents 0 used to blame the data, -3 and latent_dim 0 to end in torch internals; now one line names the
    config field, before anything is written."""
    cfg = write_config(tmp_path, {"model": tiny_perceiver(), "data": fashion_data(fashion_shards)})
    with pytest.raises(ValueError, match=rf"^{field} \((Perceiver|ImageAdapter)\): \S+ must be an integer >= [01], "
                                         rf"got {got}$"):
        run_cli(["fit", "--config", cfg, f"--model.init_args.{override}", "--trainer.logger", "false"], cwd=tmp_path)
    assert not (tmp_path / "runs").exists()
