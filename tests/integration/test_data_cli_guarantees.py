"""Data and model guarantees of issue 20, driven through `perceiver-lit` / `perceiver-lit-shards` as a user runs them:
out-of-range labels, skipped-sample reports in eval, text files the writer cannot read, a truncated eval shard,
training by steps with a schedule in epochs, and model sizes below 1."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest

from datamodules.errors import DataError, LabelRangeError
from tests.fixtures.training import fashion_data, run_cli, tiny_perceiver, write_config

pytestmark = pytest.mark.integration

QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.yaml")


def _fashion_args(shards) -> list[str]:
    return [
        "--data.init_args.train_urls",
        shards.train_urls,
        "--data.init_args.val_urls",
        shards.test_urls,
        "--data.init_args.test_urls",
        shards.test_urls,
    ]


# ------------------------------------------------------------------------------------ 20.7: training by steps
def test_quickstart_trains_by_steps_with_a_schedule_in_epochs(fashion_shards, tmp_path):
    """`--trainer.max_epochs -1 --trainer.max_steps N` with the quickstart's warmup_epochs: the loader has a length,
    so the warm-up is converted to steps from it (it used to stop with 'the train loader has no length')."""
    cli = run_cli(
        [
            "fit",
            "--config",
            os.path.abspath(QUICKSTART),
            *_fashion_args(fashion_shards),
            "--trainer.max_epochs",
            "-1",
            "--trainer.max_steps",
            "2",
            "--trainer.callbacks",
            "[]",
            "--model.init_args.warmup_epochs",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
        ],
        cwd=tmp_path,
    )
    assert cli.trainer.global_step == 2
    schedule = cli.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert schedule.warmup_steps == fashion_shards.num_train // 64  # 1 epoch = 6 batches of 64
    assert schedule.total_steps == 2


# ------------------------------------------------------------------------------------- 20.8: model sizes below 1
@pytest.mark.parametrize(
    "override, field, got",
    [
        ("net.init_args.num_latents=0", "model.init_args.net.init_args.num_latents", "0"),
        ("net.init_args.num_latents=-3", "model.init_args.net.init_args.num_latents", "-3"),
        ("net.init_args.latent_dim=0", "model.init_args.net.init_args.latent_dim", "0"),
        ("net.init_args.num_self_attention_heads=0", "model.init_args.net.init_args.num_self_attention_heads", "0"),
        (
            "net.init_args.adapter.init_args.num_frequency_bands=-1",
            "model.init_args.net.init_args.adapter.init_args.num_frequency_bands",
            "-1",
        ),
    ],
)
def test_model_sizes_below_the_minimum_fail_naming_the_field(fashion_shards, tmp_path, override, field, got):
    """num_latents 0 used to blame the data, -3 and latent_dim 0 to end in torch internals; now one line names the
    config field, before anything is written."""
    cfg = write_config(tmp_path, {"model": tiny_perceiver(), "data": fashion_data(fashion_shards)})
    with pytest.raises(
        ValueError,
        match=rf"^{field} \((Perceiver|ImageAdapter)\): \S+ must be an integer >= [01], "
        rf"got {got}$",
    ):
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
    assert any("latin1.txt: not valid UTF-8" in w for w in warned) and any(
        "link.txt: cannot be read" in w for w in warned
    )
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


# --------------------------------------------------------- 20.4: labels >= num_classes, skipped samples in eval
def test_num_classes_below_the_shards_labels_fails_before_training(fashion_shards, tmp_path):
    """`data.num_classes 5` on 10-class shards used to train, test and predict on the samples with a label under 5
    and exit 0 (test accuracy on 278 of 500 images). It is a config error, named before anything runs."""
    cfg = write_config(
        tmp_path,
        {
            "trainer": {"max_epochs": 1, "logger": False},
            "model": tiny_perceiver(),
            "data": fashion_data(fashion_shards, samples_per_epoch=100),
        },
    )
    for command in ("fit", "test", "predict"):
        # index.json records each shard's largest label: no shard is read to find out
        with pytest.raises(
            LabelRangeError,
            match=r"(train|predict|test) shard '.*(train|test)-0000\d\d\.tar' holds "
            r"labels up to 9 \(index\.json\), not below data\.init_args\."
            r"num_classes=5",
        ):
            run_cli([command, "--config", cfg, "--data.init_args.num_classes", "5"], cwd=tmp_path)
    assert not list(tmp_path.glob("runs/*/checkpoints/*.ckpt")) and not list(tmp_path.glob("runs/*/predictions*"))
    # shards without that record (older writers, hand-made): the eval scan at setup reads every eval label
    data = tmp_path / "data"
    shutil.copytree(fashion_shards.root, data)
    index = json.loads((data / "index.json").read_text())
    del index["max_label"]
    (data / "index.json").write_text(json.dumps(index))
    test_urls = str(data / os.path.basename(fashion_shards.test_urls))
    with pytest.raises(
        LabelRangeError,
        match=r"test shard '.*test-0000\d\d\.tar' key '\w+': label [5-9] is not "
        r"below data\.init_args\.num_classes=5: set data\.init_args\.",
    ):
        run_cli(
            ["test", "--config", cfg, "--data.init_args.num_classes", "5", "--data.init_args.test_urls", test_urls],
            cwd=tmp_path,
        )


def _write_npy_shards(root, prefix: str, shards: int, per_shard: int, corrupt: set[str] = frozenset()) -> str:
    """`shards` tars of 28x28 uint8 npy + cls (FashionMNISTDataModule's layout) with index.json; the keys in
    `corrupt` get an undecodable npy. Returns the brace pattern."""
    import numpy as np

    from datamodules.shards.writer import update_index
    from tests.fixtures.data import npy_bytes, write_tar

    rng = np.random.default_rng(0)
    counts = {}
    for s in range(shards):
        samples = [
            {
                "__key__": f"{prefix}{s}_{i}",
                "cls": str(i % 10),
                "npy": npy_bytes(rng.integers(0, 255, (28, 28), dtype=np.uint8)),
            }
            for i in range(per_shard)
        ]
        for sample in samples:
            if sample["__key__"] in corrupt:
                sample["npy"] = b"\x93NUMPY broken"
        write_tar(str(root / f"{prefix}-{s:06d}.tar"), samples)
        counts[f"{prefix}-{s:06d}.tar"] = per_shard
    update_index(str(root), prefix, counts)
    return str(root / f"{prefix}-{{000000..{shards - 1:06d}}}.tar")


@pytest.fixture(scope="module")
def eval_with_one_corrupt(tmp_path_factory) -> str:
    """20 eval samples in 2 shards, one of them corrupt (5%)."""
    return _write_npy_shards(tmp_path_factory.mktemp("corrupt-eval"), "eval", 2, 10, {"eval1_3"})


@pytest.mark.parametrize("command", ["validate", "test", "predict"])
def test_eval_commands_report_the_samples_they_skipped(
    fashion_shards, eval_with_one_corrupt, tmp_path, caplog, command
):
    cfg = write_config(
        tmp_path, {"trainer": {"logger": False}, "model": tiny_perceiver(), "data": fashion_data(fashion_shards)}
    )
    urls = ["--data.init_args.val_urls", eval_with_one_corrupt, "--data.init_args.test_urls", eval_with_one_corrupt]
    caplog.set_level(logging.INFO)
    # 1 of 20 skipped: more than the default 1%, so the command fails instead of reporting a metric on a subset
    with pytest.raises(
        DataError,
        match=rf"^{'val' if command == 'validate' else command}: 1 of 20 samples \(5\.0%\) "
        r"were corrupt and skipped, more than data\.init_args\.max_eval_corrupt_"
        r"fraction=0\.01",
    ):
        run_cli([command, "--config", cfg, *urls], cwd=tmp_path)
    caplog.clear()
    cli = run_cli([command, "--config", cfg, *urls, "--data.init_args.max_eval_corrupt_fraction", "0.1"], cwd=tmp_path)
    stage = "val" if command == "validate" else command
    assert any(
        r.getMessage() == f"[perceiver-lit] {stage}: 1 of 20 samples skipped as corrupt (5.00%): see the warnings above"
        for r in caplog.records
    )
    if command != "predict":
        assert cli.trainer.callback_metrics[f"{stage}/corrupt_samples"].item() == 1


# ------------------------------------------------------------------------------ 20.6: damaged validation data
def test_a_truncated_validation_shard_fails_at_setup_before_training(fashion_shards, tmp_path):
    """The eval shards are read in full at setup, against index.json: a cut-off val shard used to be found at the
    first validation, after a whole training epoch, and the run died without a checkpoint."""
    data = tmp_path / "data"
    data.mkdir()
    for name in os.listdir(fashion_shards.root):
        shutil.copy(os.path.join(fashion_shards.root, name), data / name)
    cut = data / "test-000002.tar"
    cut.write_bytes(cut.read_bytes()[: 60 * 1024 + 100])  # 100 samples of ~1.8 KB: cut inside a member
    shards = fashion_shards.__class__(
        **{
            **fashion_shards.__dict__,
            "root": str(data),
            "train_urls": str(data / "train-{000000..000003}.tar"),
            "test_urls": str(data / "test-{000000..000003}.tar"),
        }
    )
    cfg = write_config(
        tmp_path,
        {
            "trainer": {"max_epochs": 1, "logger": False},
            "model": tiny_perceiver(),
            "data": fashion_data(shards, samples_per_epoch=100),
        },
    )
    with pytest.raises(
        DataError,
        match=r"1 of 4 val shards are damaged: \S*test-000002\.tar: truncated tar \(\d+ "
        r"complete samples of 100, breaks at key",
    ):
        run_cli(["fit", "--config", cfg], cwd=tmp_path)
    assert not list(tmp_path.glob("runs/*/checkpoints/*.ckpt"))


def test_a_validation_that_fails_inside_fit_saves_the_trained_epoch(fashion_shards, eval_with_one_corrupt, tmp_path):
    """A validation that stops the run (here: more corrupt samples than max_eval_corrupt_fraction) comes after a
    whole training epoch: last.ckpt is saved before the run ends, and a resume goes on from it."""
    import torch

    cfg = write_config(
        tmp_path,
        {
            "trainer": {"max_epochs": 2, "logger": False, "num_sanity_val_steps": 0},
            "model": tiny_perceiver(),
            "data": fashion_data(fashion_shards, samples_per_epoch=100),
        },
    )
    with pytest.raises(DataError, match=r"^val: 1 of 20 samples"):
        run_cli(["fit", "--config", cfg, "--data.init_args.val_urls", eval_with_one_corrupt], cwd=tmp_path)
    last = tmp_path / "runs" / "config" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2  # the epoch's 2 steps
