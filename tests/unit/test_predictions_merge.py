"""`perceiver-lit-predictions merge` on multi-label rows: mAP from the file alone agrees with torchmetrics."""

from __future__ import annotations

import json

import pytest
import torch
from torchmetrics.classification import MultilabelAveragePrecision

from perceiver_lit.callbacks.predictions import prediction_rows
from perceiver_lit.predictions_cli import main


def test_multilabel_rows_and_merged_map(tmp_path, capsys):
    torch.manual_seed(0)
    logits = torch.randn(40, 6)
    target = (torch.rand(40, 6) < 0.3).float()
    target[0] = 0
    target[0, 2] = 1  # every class has at least one positive somewhere
    rows = prediction_rows(
        logits,
        [f"k{i:02d}" for i in range(40)],
        multilabel=True,
        threshold=0.6,
        class_names=list("abcdef"),
        target=target,
    )
    probs = logits.sigmoid()
    assert rows[0]["classes"] == [int(c) for c in probs[0].argsort(descending=True) if probs[0, c] >= 0.6]
    assert rows[0]["names"] == ["abcdef"[c] for c in rows[0]["classes"]] and rows[0]["label"] == [2]
    unlabelled = prediction_rows(logits[:2], ["u0", "u1"], multilabel=True, target=torch.full((2, 6), -1.0))
    assert all("label" not in r and "scores" not in r for r in unlabelled)
    (tmp_path / "predictions-rank0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    (tmp_path / "predictions-rank1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    assert main(["merge", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    expected = MultilabelAveragePrecision(6, average="macro")(logits, target.long()).item()
    value = float(out.split("mAP=")[1].split()[0])
    assert value == pytest.approx(expected, abs=1e-4)
    merged = [json.loads(line)["key"] for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert merged == sorted(merged) and len(merged) == 40
