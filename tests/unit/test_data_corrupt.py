"""Corrupt samples are skipped with one warning line naming shard and key, counted, and training goes on.
Nothing in a shard is ever unpickled."""

from __future__ import annotations

import io
import logging
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import DataError, LabelRangeError
from datamodules.image import ImageDataModule
from datamodules.pointcloud import PointCloudDataModule
from tests.fixtures.data import npy_bytes, write_tar


def jpeg(seed: int, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def image_dm(url: str, **kw) -> ImageDataModule:
    return ImageDataModule(
        val_urls=url,
        train_urls=url,
        image_size=8,
        crop=False,
        hflip=False,
        num_classes=10,
        batch_size=16,
        num_workers=0,
        check_counts=False,
        **kw,
    )


def eval_keys(dm) -> list[str]:
    dm.setup("validate")
    return [k for b in dm.val_dataloader() for k in b["key"]]


class Payload:
    """Unpickling this creates the marker file: proof of execution if it ever happens."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_corrupt_samples_skipped_with_one_warning_each(tmp_path, caplog):
    good = [{"__key__": f"good{i}", "jpg": jpeg(i), "cls": "1"} for i in range(5)]
    bad = [
        {"__key__": "truncated", "jpg": jpeg(9, (64, 64))[:200], "cls": "1"},
        {"__key__": "nolabel", "jpg": jpeg(10)},
        {"__key__": "badlabel", "jpg": jpeg(11), "cls": "eleven"},
        {"__key__": "negative", "jpg": jpeg(12), "cls": "-1"},
        {"__key__": "notanimage", "jpg": b"GIF89a garbage", "cls": "1"},
        {"__key__": "wrongsize", "jpg": jpeg(13, (9, 8)), "cls": "1"},
    ]
    url = write_tar(str(tmp_path / "c-0.tar"), good[:2] + bad + good[2:])
    dm = image_dm(url)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        keys = eval_keys(dm)
    assert keys == [f"good{i}" for i in range(5)]
    assert dm.corrupt_samples == len(bad)
    for s in bad:
        lines = [r.getMessage() for r in caplog.records if f"key={s['__key__']}:" in r.getMessage()]
        assert len(lines) == 1 and "c-0.tar" in lines[0] and "\n" not in lines[0], (s["__key__"], lines)


def test_a_label_at_or_above_num_classes_is_a_config_error_not_a_corrupt_sample(tmp_path):
    """42 >= num_classes=10 means the data module does not match the shards: skipping such samples would measure
    every metric on a subset of the classes (issue 20.4). The eval scan at setup finds it, naming shard and key."""
    url = write_tar(
        str(tmp_path / "c-0.tar"),
        [{"__key__": "ok", "jpg": jpeg(1), "cls": "1"}, {"__key__": "high", "jpg": jpeg(2), "cls": "42"}],
    )
    with pytest.raises(
        LabelRangeError,
        match=r"val shard .*c-0.tar' key 'high': label 42 is not below "
        r"data\.init_args\.num_classes=10",
    ):
        image_dm(url).setup("validate")
    dm = image_dm(url, scan_eval_shards=False)  # without the scan: at the sample itself, while reading
    dm.setup("validate")
    with pytest.raises(LabelRangeError, match=r"key 'high': label 42"):
        list(dm.val_dataloader())


def test_bad_npy_point_clouds_are_skipped(tmp_path):
    ok = npy_bytes(np.random.default_rng(0).random((32, 3)).astype(np.float32))
    url = write_tar(
        str(tmp_path / "p-0.tar"),
        [
            {"__key__": "ok", "npy": ok, "cls": "1"},
            {"__key__": "garbage", "npy": b"\x93NUMPY not really", "cls": "1"},
            {"__key__": "shape", "npy": npy_bytes(np.zeros((5, 2), np.float32)), "cls": "1"},
            {"__key__": "nan", "npy": npy_bytes(np.full((5, 3), np.nan, np.float32)), "cls": "1"},
        ],
    )
    dm = PointCloudDataModule(
        val_urls=url, num_points=16, num_classes=4, batch_size=8, num_workers=0, check_counts=False
    )
    assert eval_keys(dm) == ["ok"] and dm.corrupt_samples == 3


def test_truncated_tar_member_is_skipped_and_counted(tmp_path, caplog):
    url = write_tar(
        str(tmp_path / "t-0.tar"), [{"__key__": f"k{i}", "jpg": jpeg(i, (32, 32)), "cls": "1"} for i in range(4)]
    )
    data = open(url, "rb").read()
    with tarfile.open(url) as tar:
        third = [m for m in tar.getmembers() if m.name.startswith("k2.jpg")][0]
    open(url, "wb").write(data[: third.offset_data + 100])  # cut in the middle of k2.jpg
    dm = ImageDataModule(
        train_urls=url,
        image_size=32,
        crop=False,
        num_classes=10,
        batch_size=2,
        num_workers=0,
        samples_per_epoch=6,
        shuffle_buffer=2,
    )
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        batches = list(dm.train_dataloader())  # training goes on: resampling keeps reading the good part
    assert len(batches) == 3
    assert {k for b in batches for k in b["key"]} <= {"k0", "k1"}
    assert dm.corrupt_samples >= 1
    assert any("t-0.tar" in r.getMessage() and "key=k2" in r.getMessage() for r in caplog.records)


def test_pickle_payload_is_never_executed(tmp_path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(Payload(str(marker)))
    obj_npy = io.BytesIO()
    np.save(obj_npy, np.array([Payload(str(marker))], dtype=object), allow_pickle=True)
    url = write_tar(
        str(tmp_path / "evil-0.tar"),
        [
            {"__key__": "a", "jpg": jpeg(1), "cls": "1", "pyd": payload, "pickle": payload, "pth": payload},
            {"__key__": "b", "npy": obj_npy.getvalue(), "cls": "2"},  # an object array inside npy
            {"__key__": "c", "jpg": jpeg(2), "cls": "3"},
        ],
    )
    pickle.loads(payload) and None  # sanity: the payload works when unpickled...
    assert marker.exists()
    marker.unlink()  # ...then remove the proof and stream the shard
    dm = image_dm(url)
    assert eval_keys(dm) == ["a", "c"]
    assert dm.corrupt_samples == 1  # the object npy is refused (allow_pickle=False), not executed
    assert not marker.exists()
    ok = npy_bytes(np.ones((8, 3), np.float32))
    url = write_tar(
        str(tmp_path / "evil-1.tar"),
        [
            {"__key__": "p", "npy": ok, "cls": "1", "pyd": payload},
            {"__key__": "q", "npy": obj_npy.getvalue(), "cls": "1"},
        ],
    )
    pc = PointCloudDataModule(
        val_urls=url, num_points=4, num_classes=4, batch_size=8, num_workers=0, check_counts=False
    )
    assert eval_keys(pc) == ["p"] and pc.corrupt_samples == 1
    assert not marker.exists()


def test_all_corrupt_training_data_stops_with_an_error(tmp_path):
    url = write_tar(
        str(tmp_path / "w-0.tar"), [{"__key__": f"k{i}", "jpg": jpeg(i), "cls": "99x"} for i in range(50)]
    )  # every label unreadable
    dm = ImageDataModule(
        train_urls=url,
        image_size=8,
        crop=False,
        num_classes=10,
        batch_size=4,
        num_workers=0,
        samples_per_epoch=8,
        shuffle_buffer=4,
    )
    dm.setup("fit")
    with pytest.raises(DataError, match="corrupt samples in a row"):
        list(dm.train_dataloader())
