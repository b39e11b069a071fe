"""Shard writers and the perceiver-lit-shards CLI: counts, index.json, maxcount/maxsize, parallel == serial."""

from __future__ import annotations

import json
import os
import tarfile

import pytest

from datamodules.shards import cli
from datamodules.shards.writer import split_items, write_shards


def encode_sized(i: int) -> dict[str, bytes] | None:
    if i == 13:
        return None  # the encoder may skip an item
    if i == 17:
        raise ValueError("unreadable source")  # ... or fail on it: skipped with one log line
    return {"bin": bytes(1000 + i), "cls": str(i % 3).encode()}


def members(path: str) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def test_maxcount_index_and_skips(tmp_path):
    s = write_shards(list(range(50)), encode_sized, str(tmp_path), "train", maxcount=16, progress=False)
    assert s.samples == 48 and s.skipped == 2
    assert list(s.shards) == [f"train-{i:06d}.tar" for i in range(4)]
    index = json.load(open(tmp_path / "index.json"))["shards"]
    assert index == s.shards
    for name, n in s.shards.items():
        assert len(members(str(tmp_path / name))) == 2 * n and n <= 16
    assert s.pattern.endswith("train-{000000..000003}.tar") and "48 samples in 4 shards" in s.describe()


def test_maxsize_splits_shards(tmp_path):
    s = write_shards(list(range(20)), encode_sized, str(tmp_path), "x", maxcount=100, maxsize=5000, progress=False)
    assert s.samples == 18 and len(s.shards) >= 4
    for n in s.shards:  # headers + padded data within maxsize (the file itself rounds up to tar's 10 KiB record)
        with tarfile.open(tmp_path / n) as tar:
            assert sum(512 + (m.size + 511) // 512 * 512 for m in tar.getmembers()) <= 5000


def test_parallel_equals_serial_and_rewrite_replaces(tmp_path):
    a = write_shards(list(range(40)), encode_sized, str(tmp_path / "a"), "t", maxcount=7, workers=2, progress=False)
    b = write_shards(list(range(40)), encode_sized, str(tmp_path / "b"), "t", maxcount=7, workers=1, progress=False)
    assert a.shards == b.shards
    for n in a.shards:
        assert members(str(tmp_path / "a" / n)) == members(str(tmp_path / "b" / n))
    # a smaller rewrite removes the stale higher-numbered shards and their index entries
    c = write_shards(list(range(10)), encode_sized, str(tmp_path / "a"), "t", maxcount=7, progress=False)
    assert sorted(p for p in os.listdir(tmp_path / "a") if p.endswith(".tar")) == list(c.shards)
    assert json.load(open(tmp_path / "a" / "index.json"))["shards"] == c.shards


def test_index_keeps_other_prefixes(tmp_path):
    write_shards(list(range(5)), encode_sized, str(tmp_path), "train", progress=False)
    write_shards(list(range(3)), encode_sized, str(tmp_path), "test", progress=False)
    assert set(json.load(open(tmp_path / "index.json"))["shards"]) == {"train-000000.tar", "test-000000.tar"}


def test_split_items_is_deterministic_and_disjoint():
    tr, va = split_items(range(100), 0.2, seed=1)
    assert len(va) == 20 and not set(tr) & set(va) and split_items(range(100), 0.2, seed=1) == (tr, va)


def test_cli_fashion_mnist(tmp_path, capsys):
    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("dataset-fashion-mnist not installed")
    rc = cli.main(
        [
            "fashion-mnist",
            "--out",
            str(tmp_path),
            "--limit",
            "100",
            "--maxcount",
            "40",
            "--val-fraction",
            "0.2",
            "--format",
            "png",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "train: 80 samples in 2 shards" in out and "val: 20 samples in 1 shards" in out
    assert "test: 100 samples in 3 shards" in out
    assert members(str(tmp_path / "train-000000.tar"))[0].endswith(".png")


def test_cli_lists_writers_and_a_missing_module_is_an_error(monkeypatch):
    parser = cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices  # the registered subcommands
    assert {"image-folder", "fashion-mnist", "pointcloud", "text"} <= set(choices)
    # a listed writer module that is not there is a packaging error, not a silently missing subcommand
    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + ("no_such_writer",))
    with pytest.raises(ModuleNotFoundError, match=r"datamodules\.shards\.no_such_writer"):
        cli.build_parser()


def test_cli_text_fortunes(tmp_path, capsys):
    src = "/usr/share/games/fortunes/science"
    if not os.path.isfile(src):
        pytest.skip("fortunes not installed")
    cli.main(["text", src, "--unit", "fortune", "--label-from", "file", "--out", str(tmp_path), "--no-progress"])
    assert "train:" in capsys.readouterr().out
    assert json.loads((tmp_path / "classes.json").read_text()) == ["science"]


def test_a_prefix_or_key_with_a_dot_is_refused(tmp_path):
    """Readers split '<key>.<ext>' at the first dot: 'train.v2-000000.tar' members would merge into one sample."""
    with pytest.raises(ValueError, match=r"--prefix 'train.v2'.*without '\.'"):
        write_shards(list(range(3)), encode_sized, str(tmp_path), "train.v2", progress=False)
    with pytest.raises(ValueError, match=r"sample key 'img.v2'"):
        write_shards([0], lambda i: {"__key__": "img.v2", "cls": b"1"}, str(tmp_path), "train", progress=False)
    assert (
        cli.main(
            [
                "synthetic",
                "text",
                "--num-samples",
                "4",
                "--out",
                str(tmp_path / "ok"),
                "--prefix",
                "train_v2",
                "--no-progress",
            ]
        )
        == 0
    )


def test_a_run_where_every_input_fails_keeps_the_earlier_shards_and_exits_non_zero(tmp_path, capsys):
    first = write_shards(list(range(10)), encode_sized, str(tmp_path), "train", maxcount=4, progress=False)
    before = {n: (tmp_path / n).read_bytes() for n in first.shards}

    def broken(i):
        raise OSError(f"truncated file {i}")

    with pytest.raises(ValueError, match=r"none of the 3 inputs could be written .*truncated file"):
        write_shards(list(range(3)), broken, str(tmp_path), "train", progress=False)
    assert {n: (tmp_path / n).read_bytes() for n in first.shards} == before
    assert json.load(open(tmp_path / "index.json"))["shards"] == first.shards
    (tmp_path / "src" / "cat").mkdir(parents=True)
    (tmp_path / "src" / "cat" / "0.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["image-folder", str(tmp_path / "src"), "--out", str(tmp_path), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "image-folder: error: train: none of the 1 inputs" in err and "0.jpg" in err and "Traceback" not in err
    assert {n: (tmp_path / n).read_bytes() for n in first.shards} == before


def test_the_shard_writers_load_neither_torch_nor_lightning():
    """`perceiver-lit-shards` starts fast and needs no training stack: the writers and every subcommand's parser
    import neither torch nor Lightning (the writer once imported the whole data module for one constant)."""
    import subprocess
    import sys

    code = (
        "import sys, datamodules.shards.writer; from datamodules.shards.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
