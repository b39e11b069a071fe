"""benchmarks/pretrained.py at a toy size: every row (three forward, one fine-tuning step) with both entries' figures.
A smoke test of the script, not a measurement. Without the peak-memory subprocesses (eight fresh interpreters
importing transformers: minutes on 2 cores); the probe itself is tested in test_benchmarks.py."""

import json

import pytest

pytest.importorskip("transformers")


def test_pretrained_benchmark_writes_every_row(tmp_path):
    from benchmarks.pretrained import main

    result = main(["--toy", "--rounds", "1", "--no-memory", "--out-dir", str(tmp_path)])
    rows = {(r["family"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {("fourier", "forward"), ("learned", "forward"), ("conv", "forward"), ("conv", "train")}
    for r in rows.values():
        assert r["hf_samples_per_s"] > 0 and r["ours_samples_per_s"] > 0 and r["speedup"] > 0
    assert json.loads((tmp_path / "pretrained.json").read_text())["rows"] == result["rows"]
    assert "| conv | train |" in (tmp_path / "pretrained.md").read_text()
