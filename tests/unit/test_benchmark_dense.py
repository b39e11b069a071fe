"""benchmarks/dense.py at a toy size: every row (flow and autoencoding forwards, their training steps) with both
entries' figures and the forwards' parity. A smoke test of the script, not a measurement; the peak-memory probe runs
for one row (each probe is a fresh interpreter importing transformers)."""

import json

import pytest

pytest.importorskip("transformers")


def test_dense_benchmark_writes_every_row(tmp_path):
    from benchmarks.dense import main

    result = main(["--toy", "--rounds", "1", "--warmup", "0", "--no-memory", "--out-dir", str(tmp_path)])
    rows = {r["case"]: r for r in result["rows"]}
    assert set(rows) == {"flow_forward", "autoencoding_forward", "flow_train", "autoencoding_train"}
    for r in rows.values():
        assert r["hf_samples_per_s"] > 0 and r["ours_samples_per_s"] > 0 and r["speedup"] > 0
    for case in ("flow_forward", "autoencoding_forward"):  # converted weights: the same outputs as HF's
        assert rows[case]["parity_ok"] and rows[case]["hf_max_abs"] > 0, rows[case]
    assert json.loads((tmp_path / "dense.json").read_text())["rows"] == result["rows"]
    assert "| flow | forward | 6 x 8 |" in (tmp_path / "dense.md").read_text()


@pytest.mark.integration
def test_dense_benchmark_memory_and_split_hf_decode(tmp_path):
    """One row with the peak-memory processes, HF decoding the clip in 2 calls: its outputs still equal ours."""
    from benchmarks.dense import main

    result = main(
        [
            "--toy",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--cases",
            "autoencoding_forward",
            "--hf-calls",
            "2",
            "--out-dir",
            str(tmp_path),
        ]
    )
    (row,) = result["rows"]
    assert row["hf_calls"] == 2 and row["parity_ok"]
    assert row["hf_peak_bytes"] > 0 and row["ours_peak_bytes"] > 0 and row["model_bytes"] == 4 * row["params"]
    assert row["memory_above_model_ratio"] > 0
    assert "(HF: 2 calls)" in (tmp_path / "dense.md").read_text()
