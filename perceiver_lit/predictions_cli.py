"""`perceiver-lit-predictions merge RUN`: join the per-rank prediction files of a run into one sorted file.

    perceiver-lit-predictions merge runs/quickstart                 # -> runs/quickstart/predictions.jsonl
    perceiver-lit-predictions merge runs/quickstart --out preds.jsonl

RUN is the run directory `perceiver-lit predict` wrote `predictions-rank<r>.jsonl` into. The merged file holds every
line once, sorted by `key`. When the lines carry a `label` (a labelled split), the command also prints, from the
file alone, top-1 and top-k accuracy (single-label) or the mAP over classes (multi-label, from `scores`).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any

import numpy as np


def read_rows(paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {number}: not JSON ({e})") from None
    return rows


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class: the mean precision at each positive, samples ranked by score (highest first)."""
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def metrics(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """accuracy (acc1, acc<k>) or mAP from the labelled rows; None when no row has a label."""
    labelled = [r for r in rows if "label" in r]
    if not labelled:
        return None
    out: dict[str, float] = {"labelled": len(labelled)}
    if isinstance(labelled[0]["label"], list):  # multi-label: mAP over classes with a positive, from `scores`
        if any("scores" not in r for r in labelled):
            raise ValueError("multi-label rows without `scores`: cannot compute mAP")
        scores = np.array([r["scores"] for r in labelled], dtype=np.float64)  # (N, C)
        truth = np.zeros_like(scores, dtype=bool)
        for i, r in enumerate(labelled):
            truth[i, r["label"]] = True
        aps = [average_precision(scores[:, c], truth[:, c]) for c in range(scores.shape[1]) if truth[:, c].any()]
        out["mAP"] = float(np.mean(aps)) if aps else float("nan")
        return out
    k = min(len(r["classes"]) for r in labelled)
    out["acc1"] = float(np.mean([r["classes"][0] == r["label"] for r in labelled]))
    if k > 1:
        out[f"acc{k}"] = float(np.mean([r["label"] in r["classes"][:k] for r in labelled]))
    return out


def merge(run: str, out: str | None = None) -> tuple[str, list[dict[str, Any]], dict[str, float] | None]:
    """Join RUN/predictions-rank*.jsonl into `out` (default RUN/predictions.jsonl), sorted by key."""
    paths = sorted(glob.glob(os.path.join(run, "predictions-rank*.jsonl")))
    if not paths:
        raise FileNotFoundError(
            f"no predictions-rank*.jsonl in {run!r}: run `perceiver-lit predict` first "
            "(it writes them into the run directory)"
        )
    rows = read_rows(paths)
    rows.sort(key=lambda r: str(r.get("key")))
    out = out or os.path.join(run, "predictions.jsonl")
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return out, rows, metrics(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="perceiver-lit-predictions", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("merge", help="join the per-rank prediction files of a run into one sorted file")
    p.add_argument("run", help="the run directory (holding predictions-rank<r>.jsonl)")
    p.add_argument("--out", default=None, help="output file (default: RUN/predictions.jsonl)")
    args = parser.parse_args(argv)
    try:
        out, rows, scores = merge(args.run, args.out)
    except (OSError, ValueError) as e:
        parser.exit(2, f"{parser.prog} merge: error: {e}\n")
    print(f"merged {len(rows)} predictions -> {out}")
    if scores is not None:
        n = int(scores.pop("labelled"))
        print(f"{n} of {len(rows)} samples labelled: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
