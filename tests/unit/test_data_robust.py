"""Damaged data found by review, each on real tar shards: shards that give no sample, bad shards late in the list,
damaged PAX headers, failing `pipe:` commands, evaluations that decode nothing, single-label data in a multi-label
module."""

from __future__ import annotations

import io
import logging
import os
import tarfile

import numpy as np
import pytest

from datamodules.errors import DataError
from datamodules.image import ImageDataModule
from datamodules.tarstream import first_header_problem, iter_members
from tests.fixtures.data import write_tar
from tests.unit.test_data_corrupt import eval_keys, image_dm, jpeg


def _good_shard(path, n: int = 4, cls: str = "1") -> str:
    return write_tar(str(path), [{"__key__": f"k{i}", "jpg": jpeg(i), "cls": cls} for i in range(n)])


def _train_dm(urls, **kw) -> ImageDataModule:
    return ImageDataModule(
        train_urls=urls,
        image_size=8,
        crop=False,
        hflip=False,
        num_classes=10,
        batch_size=2,
        num_workers=0,
        samples_per_epoch=8,
        shuffle_buffer=2,
        **kw,
    )


def test_training_over_shards_that_give_no_sample_stops_with_an_error(tmp_path):
    """Such shards used to be drawn again and again forever: the run hung with no message."""
    empty = str(tmp_path / "empty.tar")
    tarfile.open(empty, "w").close()  # a valid archive with no members
    cut = _good_shard(tmp_path / "cut.tar")
    with tarfile.open(cut) as tar:
        first = tar.getmembers()[0]
    data = open(cut, "rb").read()
    open(cut, "wb").write(data[: first.offset_data + 10])  # broken inside its first member
    dirs = str(tmp_path / "dirs.tar")
    with tarfile.open(dirs, "w") as tar:
        d = tarfile.TarInfo("folder")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
    for url in (empty, cut, dirs):
        dm = _train_dm(url, skip_bad_shards=True)
        dm.setup("fit")
        with pytest.raises(DataError, match=r"shards in a row gave no sample.*" + os.path.basename(url)):
            list(dm.train_dataloader())


def test_setup_reads_every_shard_header_not_only_the_first(tmp_path, caplog):
    good = _good_shard(tmp_path / "a-good.tar")
    zero = tmp_path / "b-zero.tar"
    zero.write_bytes(b"")  # an interrupted copy
    junk = tmp_path / "c-junk.tar"
    junk.write_bytes(os.urandom(2000))
    urls = [good, str(zero), str(junk)]
    assert first_header_problem(good) is None
    assert first_header_problem(str(zero)) == "empty file" and "not a tar" in first_header_problem(str(junk))
    with pytest.raises(
        DataError,
        match=r"2 of 3 train shards are unreadable: .*b-zero.tar: empty file; "
        r".*c-junk.tar: not a tar archive.*skip_bad_shards=True",
    ):
        _train_dm(urls).setup("fit")
    dm = _train_dm(urls, skip_bad_shards=True)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        dm.setup("fit")
        batches = list(dm.train_dataloader())  # training goes on with the good shard
    assert len(batches) == 4 and dm.bad_shards >= 1
    for name in ("b-zero.tar", "c-junk.tar"):  # drawn many times, named once in training
        lines = [r for r in caplog.records if "unreadable shard skipped" in r.getMessage() and name in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]


def test_a_damaged_pax_header_is_a_broken_shard_not_a_crash(tmp_path, caplog):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3):
            for ext, data in (("jpg", jpeg(i)), ("cls", b"1")):
                info = tarfile.TarInfo(f"k{i}-ünï.{ext}")  # non-ASCII: every member gets a PAX header
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    at = raw.index(b" path=k2")  # the length field of k2's first PAX record
    damaged = raw[: at - 2] + b"x" + raw[at - 1 :]
    with pytest.raises(tarfile.ReadError, match="invalid PAX record length"):
        list(iter_members(io.BytesIO(damaged)))
    url = tmp_path / "pax.tar"
    url.write_bytes(damaged)
    dm = image_dm(str(url))
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        keys = eval_keys(dm)
    # k1 was still being read (a sample ends at the next key) when the stream broke: dropped with the rest
    assert keys == ["k0-ünï"] and dm.corrupt_samples == 1
    assert any("pax.tar" in r.getMessage() and "PAX" in r.getMessage() for r in caplog.records)


def test_a_pipe_shard_whose_command_fails_is_counted_and_reading_goes_on(tmp_path):
    """webdataset's pipe raises the command's exit status at the first read after it exits (how much was read by
    then is timing), or at close: either way the shard counts as broken once and the pass goes on."""
    good = _good_shard(tmp_path / "p.tar")
    size = os.path.getsize(good)
    for command in (
        f"cat {good}; exit 3",  # e.g. `aws s3 cp` failing after the last byte
        f"head -c {size // 2} {good}; exit 56",
    ):  # curl cut off mid-transfer
        dm = image_dm(f"pipe:{command}")
        keys = eval_keys(dm)
        assert keys == ["k0", "k1", "k2", "k3"][: len(keys)] and dm.corrupt_samples == 1, (command, keys)


def test_an_evaluation_that_decodes_nothing_is_an_error(tmp_path):
    url = _good_shard(tmp_path / "v.tar", n=5, cls="4 2")  # every label unreadable
    with pytest.raises(DataError, match=r"every one of the 5 samples .*v.tar.* was corrupt.*num_classes"):
        eval_keys(image_dm(url))


def test_a_multilabel_module_reads_a_cls_label_as_one_hot(tmp_path):
    url = _good_shard(tmp_path / "m.tar", n=3, cls="7")
    dm = image_dm(url, multilabel=True)
    dm.setup("validate")
    (batch,) = list(dm.val_dataloader())
    expected = np.zeros((3, 10), np.float32)
    expected[:, 7] = 1
    np.testing.assert_array_equal(batch["target"].numpy(), expected)
