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


def test_pretrained_benchmark_only_runs_the_named_row_like_for_like(tmp_path):
    """--only conv-step: that row alone; HF's side runs without attention dropout, as the converted model does."""
    from benchmarks.pretrained import build, main

    result = main(["--toy", "--rounds", "1", "--no-memory", "--only", "conv-step", "--out-dir", str(tmp_path)])
    assert [(r["family"], r["mode"]) for r in result["rows"]] == [("conv", "train")]
    hf = build("conv", "hf", "train", 1, toy=True).model
    assert hf.config.attention_probs_dropout_prob == 0.0
    assert build("conv", "hf", "forward", 1, toy=True).model.config.attention_probs_dropout_prob == 0.1
    with pytest.raises(SystemExit):
        main(["--toy", "--only", "conv-train", "--out-dir", str(tmp_path)])
