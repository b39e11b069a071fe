"""`perceiver-lit-shards audio` / `video`: label CSVs (AudioSet segments + label map, simple path,labels) and the
samples they write."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from datamodules.shards import audio as SA
from datamodules.shards import labels as SL
from datamodules.shards.cli import main

AUDIOSET_CSV = """\
# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
-0RWZT-miFs, 420.000, 430.000, "/m/07rwj"
missingYTID, 0.000, 10.000, "/m/09x0r"
"""
LABEL_MAP = """\
index,mid,display_name
0,/m/09x0r,"Speech"
1,/t/dd00088,"Gush"
2,/m/07rwj,"Wind"
"""


def tone(path, sr: int = 8000) -> None:
    sf.write(path, np.sin(np.arange(800) / 5).astype(np.float32), sr)


def read_shard(path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def test_audioset_csv_with_label_map(tmp_path) -> None:
    (tmp_path / "audio").mkdir()
    tone(tmp_path / "audio" / "--PJHxphWEs_30000.flac")  # downloader names with the start in ms
    tone(tmp_path / "audio" / "-0RWZT-miFs.flac")  # ... or the bare YTID
    (tmp_path / "segments.csv").write_text(AUDIOSET_CSV)
    (tmp_path / "labels.csv").write_text(LABEL_MAP)
    assert SA.detect_csv_format(tmp_path / "segments.csv") == "audioset"
    rows, missing = SA.read_audioset_csv(
        tmp_path / "segments.csv", tmp_path / "audio", SL.read_label_map(tmp_path / "labels.csv")
    )
    assert missing == 1
    assert sorted((p.rsplit("/", 1)[1], labels) for p, labels in rows) == [
        ("--PJHxphWEs_30000.flac", [0, 1]),
        ("-0RWZT-miFs.flac", [2]),
    ]
    out = tmp_path / "shards"
    assert (
        main(
            [
                "audio",
                str(tmp_path / "audio"),
                "--labels",
                str(tmp_path / "segments.csv"),
                "--label-map",
                str(tmp_path / "labels.csv"),
                "--out",
                str(out),
                "--no-progress",
                "--sample-rate",
                "16000",
            ]
        )
        == 0
    )
    samples = read_shard(out / "train-000000.tar")
    labels = sorted(json.loads(s["json"]) for s in samples.values())
    assert labels == [[0, 1], [2]]
    for s in samples.values():
        wave, sr = sf.read(io.BytesIO(s["flac"]))
        assert sr == 16000 and len(wave) == 1600  # re-encoded at the asked rate
    assert sum(json.loads((out / "index.json").read_text())["shards"].values()) == 2


def test_audioset_csv_needs_a_label_map(tmp_path) -> None:
    (tmp_path / "segments.csv").write_text(AUDIOSET_CSV)
    with pytest.raises(ValueError, match="--label-map"):
        SA.audio_items(str(tmp_path), str(tmp_path / "segments.csv"))


def test_simple_csv_with_names_builds_a_vocabulary(tmp_path) -> None:
    for name in ("a.wav", "b.wav", "c.wav"):
        tone(tmp_path / name)
    (tmp_path / "labels.csv").write_text('path,labels\na.wav,"dog,cat"\nb.wav,cat\nc.wav,bird\n')
    items = SA.audio_items(str(tmp_path), str(tmp_path / "labels.csv"), out_dir=str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["bird", "cat", "dog"]
    assert [(p.rsplit("/", 1)[1], labels) for p, labels in items] == [("a.wav", [2, 1]), ("b.wav", [1]), ("c.wav", [0])]
    sample = SA.encode_audio(items[1])
    assert sample["cls"] == b"1" and json.loads(sample["json"]) == [1] and sample["wav"][:4] == b"RIFF"
    (tmp_path / "bad.csv").write_text("file,label\na.wav,1\n")
    with pytest.raises(ValueError, match="path,labels"):
        SL.read_simple_csv(tmp_path / "bad.csv", tmp_path, None)


def test_video_writer_class_folders_with_audio_twins(tmp_path) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / "src" / cls).mkdir(parents=True)
        (tmp_path / "src" / cls / "x.mp4").write_bytes(b"not really an mp4")  # bytes are copied, not decoded
        tone(tmp_path / "src" / cls / "x.flac")
    (tmp_path / "src" / "dog" / "lonely.mp4").write_bytes(b"no flac twin")
    out = tmp_path / "out"
    main(["video", str(tmp_path / "src"), "--out", str(out), "--with-audio", "flac", "--no-progress"])
    samples = read_shard(out / "train-000000.tar")
    assert len(samples) == 2  # the video without its flac is skipped
    assert sorted(s["cls"] for s in samples.values()) == [b"0", b"1"]
    assert all(set(s) == {"mp4", "flac", "json", "cls"} for s in samples.values())
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog"]


def test_csv_errors_name_the_file_and_line(tmp_path) -> None:
    (tmp_path / "labels.csv").write_text(LABEL_MAP)
    label_map = SL.read_label_map(str(tmp_path / "labels.csv"))
    (tmp_path / "segments.csv").write_text(AUDIOSET_CSV.replace('"/m/07rwj"', '"/m/zzz"'))
    with pytest.raises(ValueError, match=r"segments.csv, line 5: label '/m/zzz' not in the label map"):
        SA.read_audioset_csv(tmp_path / "segments.csv", tmp_path, label_map)
    (tmp_path / "segments.csv").write_text(AUDIOSET_CSV.replace("420.000", "thirty"))
    with pytest.raises(ValueError, match=r"segments.csv, line 5: could not convert string to float"):
        SA.read_audioset_csv(tmp_path / "segments.csv", tmp_path, label_map)
    (tmp_path / "simple.csv").write_text("path,labels\na.wav,/m/09x0r\nb.wav,/m/nope\n")
    with pytest.raises(ValueError, match=r"simple.csv, line 3: label '/m/nope'"):
        SL.read_simple_csv(tmp_path / "simple.csv", tmp_path, label_map)
