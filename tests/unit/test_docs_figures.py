"""Figures quoted in the docs are the ones in benchmarks/results (docs/media.md's loader overheads and the README's
acceptance row, against loader_media.json)."""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_media_loader_overheads_in_docs_match_the_benchmark_results():
    rows = json.loads((ROOT / "benchmarks" / "results" / "loader_media.json").read_text())["rows"]
    measured = {(r["modality"], r["mode"]): round(100 * r["overhead"], 1) for r in rows if r["workers"] == 0}
    doc = (ROOT / "docs" / "media.md").read_text()
    table = {"audio raw": "audio-raw", "audio mel": "audio-mel", "video": "video"}
    found = {}
    for line in doc.splitlines():
        m = re.match(r"\| (audio raw|audio mel|video):.*\| ([\d.]+)% / ([\d.]+)% \|$", line)
        if m:
            found[table[m[1]]] = (float(m[2]), float(m[3]))
    assert set(found) == {"audio-raw", "audio-mel", "video"}
    for modality, (eval_pct, train_pct) in found.items():
        assert (eval_pct, train_pct) == (measured[(modality, "eval")], measured[(modality, "train")]), modality
    # The README's acceptance row quotes the same results as ranges.
    readme = (ROOT / "README.md").read_text()
    audio = [v for (m, _), v in measured.items() if m.startswith("audio")]
    video = [v for (m, _), v in measured.items() if m == "video"]
    assert f"audio {min(audio)}-{max(audio)}%" in readme and f"video {min(video)}-{max(video)}%" in readme
