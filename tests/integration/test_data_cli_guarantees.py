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


# ------------------------------------------------------------------ 20.5: text files the writer cannot read
def _shards_main(argv: list[str]) -> int:
    from datamodules.shards.cli import main

    return main(argv)


def test_text_writer_names_and_counts_the_files_it_skips(tmp_path, caplog, capsys):
    """A non-UTF-8 file and a dangling link in a class folder: one warning each, counted in the summary; both
    classes stay (they have other, readable files)."""
    src = tmp_path / "src"
    for name, lines in {"pos": "good\nfine\n", "neg": "bad\nawful\n"}.items():
        (src / name).mkdir(parents=True)
        (src / name / "a.txt").write_text(lines)
    (src / "neg" / "latin1.txt").write_bytes(b"caf\xe9\nna\xefve\n")
    os.symlink(tmp_path / "gone.txt", src / "pos" / "link.txt")
    out = tmp_path / "out"
    assert _shards_main(["text", str(src), "--label-from", "dir", "--out", str(out), "--no-progress"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.name == "datamodules.shards" and "skipping" in r.getMessage()]
    assert len(warned) == 2, warned
    assert any("latin1.txt: not valid UTF-8" in w for w in warned) and any("link.txt: cannot be read" in w
                                                                            for w in warned)
    assert "4 samples in 1 shards, 0.0 MB, 2 skipped" in capsys.readouterr().out
    assert (out / "classes.json").read_text().split() == ["[", '"neg",', '"pos"', "]"]


def test_text_writer_refuses_to_lose_a_whole_class(tmp_path, capsys):
    """With --label-from file a non-UTF-8 file is a whole class: dropping it would shift every later index, so the
    writer exits 2 naming the class and the file, and writes nothing."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "de").write_text("hallo\n")
    (src / "en").write_text("hello\n")
    (src / "fr").write_bytes(b"caf\xe9\n")
    (src / "it").write_text("ciao\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        _shards_main(["text", str(src), "--unit", "line", "--label-from", "file", "--out", str(out), "--no-progress"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"class 'fr' (--label-from file) has no readable text: {src / 'fr'} is not valid UTF-8" in err
    assert not out.exists()
