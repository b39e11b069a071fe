"""`perceiver-lit-shards synthetic MODALITY` hands every common writer option (--prefix --maxcount --maxsize --workers
--seed --no-shuffle --no-progress) to the shard writer, for every generator; and the documented local point-cloud
fit (configs/local/pointcloud.yaml) runs on the shards its header says to write."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from datamodules.shards import writer
from datamodules.shards.cli import main
from datamodules.shards.synthetic import MODALITIES
from datamodules.shards.synthetic_media import available_languages

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# Smallest real files per generator (tones: no speech engine needed, fast).
CASES = {
    "video": ("video", ["--frames", "4", "--size", "16"], "val"),
    "audio": ("audio", ["--seconds", "0.5", "--engine", "tones"], "val"),
    "audiovisual": ("audiovisual", ["--frames", "4", "--size", "16", "--engine", "tones"], "val"),
    "pointcloud-off": ("pointcloud", ["--num-points", "64"], "test"),
    "pointcloud-npy": ("pointcloud", ["--num-points", "64", "--points-format", "npy"], "test"),
    "text": ("text", ["--languages", "en,de"], "val"),
    "flow": ("flow", ["--flow-size", "16"], "val"),
}


def test_every_modality_has_a_case():
    assert {modality for modality, _, _ in CASES.values()} == set(MODALITIES)


def _keys(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return list(dict.fromkeys(m.name.split(".")[0] for m in tar.getmembers()))


@pytest.mark.parametrize("case", list(CASES))
def test_writer_options_reach_the_shards(case, tmp_path, monkeypatch):
    modality, extra, held_out = CASES[case]
    if modality == "text" and not {"en", "de"} <= set(available_languages()):
        pytest.skip("Debian's fortunes and fortunes-de are not installed")
    calls = []
    real = writer.write_shards

    def recording(items, encode, out_dir, prefix, **kwargs):  # the real writer, with its arguments noted
        calls.append((prefix, len(items), kwargs))
        return real(items, encode, out_dir, prefix, **kwargs)

    monkeypatch.setattr(writer, "write_shards", recording)
    out = tmp_path / "out"
    assert (
        main(
            [
                "synthetic",
                modality,
                "--out",
                str(out),
                "--num-samples",
                "6",
                "--val-fraction",
                "0.34",
                "--prefix",
                "synth",
                "--maxcount",
                "2",
                "--maxsize",
                "1",
                "--workers",
                "2",
                "--seed",
                "7",
                "--no-shuffle",
                "--no-progress",
                *extra,
            ]
        )
        == 0
    )
    options = {"maxcount": 2, "maxsize": 1, "workers": 2, "seed": 7, "shuffle": False, "progress": False}
    assert calls == [("synth", 4, options), (held_out, 2, options)]
    # On disk: the prefix names the training shards; --maxsize 1 puts each sample in its own shard (under
    # --maxcount 2); --no-shuffle keeps the source order (keys carry the item's index).
    shards = json.loads((out / "index.json").read_text())["shards"]
    assert shards == {**{f"synth-{i:06d}.tar": 1 for i in range(4)}, **{f"{held_out}-{i:06d}.tar": 1 for i in range(2)}}
    keys = [k for i in range(4) for k in _keys(out / f"synth-{i:06d}.tar")]
    assert keys == [f"synth_{i:08d}" for i in range(4)]


def test_documented_local_pointcloud_fit(tmp_path):
    """The commands in configs/local/pointcloud.yaml's header, as written, from a fresh folder: the shards it writes
    are the ones the config names (train-000000..000003, test-000000), and a short fit runs on them."""
    import subprocess
    import sys

    config = (ROOT / "configs" / "local" / "pointcloud.yaml").read_text()
    header = " ".join(line.lstrip("# ").rstrip("\\ ") for line in config.splitlines()[2:4])
    assert header.startswith("Data: perceiver-lit-shards synthetic pointcloud"), header
    shards_args = header.split("perceiver-lit-shards ", 1)[1].split()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "WANDB_MODE": "offline"}
    bin_dir = Path(sys.executable).parent
    shards = subprocess.run(
        [str(bin_dir / "perceiver-lit-shards"), *shards_args, "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert shards.returncode == 0, shards.stderr[-3000:]
    out = tmp_path / "data" / "synthetic" / "pointcloud"
    assert sorted(p.name for p in out.glob("*.tar")) == ["test-000000.tar"] + [f"train-{i:06d}.tar" for i in range(4)]
    fit = subprocess.run(
        [
            sys.executable,
            "-m",
            "perceiver_lit.cli",
            "fit",
            "--config",
            str(ROOT / "configs" / "local" / "pointcloud.yaml"),
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (tmp_path / "runs" / "local-pointcloud" / "checkpoints" / "last.ckpt").is_file()
    shutil.rmtree(out / "files")


def test_held_out_split_is_shuffled_like_train(tmp_path):
    """Held-out shards are shuffled (seeded) like the training shards: a prefix of them, as `limit_val_batches`
    reads, is a random sample of the split and not its first classes (class-sorted val once gave a recipe's
    per-epoch val/acc1 0.00 from clips of 4 of its 10 classes)."""

    def held_out_keys(out: Path) -> list[str]:
        extra = ["--maxcount", "100", "--no-progress", "--frames", "2", "--size", "16"]
        args = ["synthetic", "video", "--out", str(out), "--num-samples", "40", "--val-fraction", "0.5", *extra]
        assert main(args) == 0
        return _keys(out / "val-000000.tar")

    keys = held_out_keys(tmp_path / "a")
    assert len(keys) == 20 and keys != sorted(keys)
    assert held_out_keys(tmp_path / "b") == keys  # seeded: the same order every time
