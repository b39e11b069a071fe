"""StreamingDataModule: URL checks, fixed train epochs, exact eval passes, count checks, clear errors."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from datamodules.errors import DataError
from datamodules.image import ImageDataModule
from datamodules.shards.writer import write_shards
from datamodules.sources import expand_urls, read_index_counts
from datamodules.stream import train_batches_per_worker
from tests.fixtures.data import npy_bytes, write_tar


def encode_tiny(i: int) -> dict[str, bytes]:
    return {"npy": npy_bytes(np.full((4, 4), i % 256, np.uint8)), "cls": str(i % 10).encode()}


@pytest.fixture
def tiny(tmp_path) -> str:
    """5 train shards of uneven size (10, 10, 10, 7, 1 samples... via maxcount 10 over 38 items) -> pattern."""
    s = write_shards(list(range(38)), encode_tiny, str(tmp_path), "train", maxcount=10, progress=False)
    assert list(s.shards.values()) == [10, 10, 10, 8]
    return s.pattern


def make_dm(urls: str, **kw) -> ImageDataModule:
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_workers", 0)
    return ImageDataModule(
        train_urls=urls, val_urls=urls, image_size=4, crop=False, channels=1, hflip=False, num_classes=10, **kw
    )


def test_facts_after_init():
    dm = make_dm("x-{0..1}.tar")  # no file access before setup
    assert (dm.num_classes, dm.input_shape, dm.multilabel, dm.permute_seed) == (10, (4, 4, 1), False, None)


def test_expand_urls_errors_name_the_pattern(tmp_path):
    with pytest.raises(DataError, match=r"nothing-\{0\.\.3\}\.tar.*matches no file"):
        expand_urls(str(tmp_path / "nothing-{0..3}.tar"))
    write_tar(str(tmp_path / "a-0.tar"), [{"__key__": "k", "cls": "1"}])
    with pytest.raises(DataError, match="1 of 2 files missing"):
        expand_urls(str(tmp_path / "a-{0..1}.tar"))
    assert expand_urls([str(tmp_path / "a-0.tar"), "pipe:cat x"]) == [str(tmp_path / "a-0.tar"), "pipe:cat x"]


@pytest.mark.parametrize("per_rank,workers", [(10, 3), (7, 2), (1, 4)])
def test_train_batches_split_over_workers_sum_to_rank_total(per_rank, workers):
    total = sum(train_batches_per_worker(per_rank * 2 * 8, 8, 2, workers, w) for w in range(workers))
    assert total == per_rank


@pytest.mark.parametrize("workers", [0, 2])
def test_train_epoch_has_fixed_batch_count(tiny, workers):
    dm = make_dm(tiny, num_workers=workers, samples_per_epoch=50, shuffle_buffer=8)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 50 // 4
    assert all(b["inputs"].shape == (4, 4, 4, 1) and b["target"].dtype.is_floating_point is False for b in batches)
    assert len(list(loader)) == 12  # next epoch: same count


def test_train_epochs_differ_but_are_seeded(tiny):
    def keys(seed):
        dm = make_dm(tiny, samples_per_epoch=20, shuffle_buffer=8, seed=seed, mix_batches=2)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return [sum((b["key"] for b in loader), []) for _ in range(2)]

    a, b = keys(1), keys(1)
    assert a == b  # reproducible
    assert a[0] != a[1]  # a new order each epoch


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_pass_is_exact(tiny, workers):
    dm = make_dm(tiny, num_workers=workers, batch_size=3)
    dm.setup("validate")
    keys = [k for b in dm.val_dataloader() for k in b["key"]]
    assert len(keys) == 38 and len(set(keys)) == 38
    # docs/data.md: len() is exact when index.json has counts; each worker's stream ends in a short batch
    # (0 workers: one stream of 38 -> 13 batches; 2 workers: shards 0, 2 (20) -> 7 and 1, 3 (18) -> 6)
    batches = list(dm.val_dataloader())
    assert len(dm.val_dataloader()) == len(batches) == 13


def test_samples_per_epoch_defaults_to_index_total(tiny):
    dm = make_dm(tiny)
    dm.setup("fit")
    assert dm.samples_per_epoch == 38 and read_index_counts(expand_urls(tiny))


def test_too_few_eval_shards_for_workers(tiny):
    dm = make_dm(tiny, num_workers=5)
    with pytest.raises(DataError, match="4 shards for 1 ranks x 5 workers.*lower num_workers"):
        dm.setup("validate")


def test_count_mismatch_is_an_error(tiny):
    index = os.path.join(os.path.dirname(tiny), "index.json")
    data = json.load(open(index))
    data["shards"]["train-000001.tar"] = 11
    json.dump(data, open(index, "w"))
    with pytest.raises(
        DataError,
        match=r"1 of 4 val shards are damaged: \S*train-000001\.tar: 10 samples, "
        r"index.json says 11",
    ):
        make_dm(tiny).setup("validate")  # the eval shards are read in full at setup
    dm = make_dm(tiny, scan_eval_shards=False)
    dm.setup("validate")
    with pytest.raises(DataError, match=r"train-000001\.tar' held 10 samples, index.json says 11"):
        list(dm.val_dataloader())


def test_missing_label_key_fails_before_training(tmp_path):
    url = write_tar(str(tmp_path / "s-0.tar"), [{"__key__": "a", "npy": npy_bytes(np.zeros((4, 4), np.uint8))}])
    with pytest.raises(DataError, match=r"key 'a': no label key among \['cls', 'json'\] \(found \['npy'\]\)"):
        make_dm(url, samples_per_epoch=8).setup("fit")
    url = write_tar(str(tmp_path / "t-0.tar"), [{"__key__": "b", "cls": "1", "txt": "x"}])
    with pytest.raises(DataError, match="no input key among"):
        make_dm(url, samples_per_epoch=8).setup("fit")


def test_unopenable_shard_is_an_error_unless_skipped(tiny, tmp_path, caplog):
    bad = tmp_path / "bad-0.tar"
    bad.write_bytes(b"this is not a tar file" * 10)
    urls = [expand_urls(tiny)[0], str(bad)]
    with pytest.raises(DataError, match="1 of 2 val shards are unreadable: .*bad-0.tar: not a tar archive"):
        make_dm(urls).setup("validate")  # setup reads every shard's first header
    bad.write_bytes(open(urls[0], "rb").read())
    dm = make_dm(urls, check_counts=False)
    dm.setup("validate")
    bad.write_bytes(b"this is not a tar file" * 10)  # a shard that breaks after setup fails when it is read
    with pytest.raises(DataError, match="cannot open shard .*bad-0.tar"):
        list(dm.val_dataloader())
    dm = make_dm(urls, skip_bad_shards=True, check_counts=False)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        dm.setup("validate")
        keys = [k for b in dm.val_dataloader() for k in b["key"]]
    assert len(keys) == 10 and dm.bad_shards == 1
    messages = [r.getMessage() for r in caplog.records if "bad-0.tar" in r.getMessage()]
    assert len(messages) == 2 and "will be skipped" in messages[0] and "skipped (skip_bad_shards" in messages[1]


def test_pipe_urls_stream(tiny):
    first = expand_urls(tiny)[0]
    dm = make_dm(f"pipe:cat {first}", check_counts=False)
    dm.setup("validate")
    assert sum(len(b["key"]) for b in dm.val_dataloader()) == 10


def test_multilabel_json_gives_multi_hot(tmp_path):
    img = npy_bytes(np.zeros((4, 4), np.uint8))
    url = write_tar(
        str(tmp_path / "m-0.tar"),
        [{"__key__": "a", "npy": img, "json": "[1, 3]"}, {"__key__": "b", "npy": img, "json": '{"label": [0]}'}],
    )
    dm = make_dm(url, multilabel=True, check_counts=False)
    dm.setup("validate")
    (batch,) = list(dm.val_dataloader())
    assert batch["target"].dtype.is_floating_point and batch["target"].shape == (2, 10)
    assert batch["target"][0].nonzero().flatten().tolist() == [1, 3]
    assert batch["target"][1].nonzero().flatten().tolist() == [0]


def test_buffer_pool_reuses_memory_only_once_nothing_refers_to_it():
    import torch

    from datamodules.buffers import BufferPool

    pool = BufferPool(keep=3, min_bytes=1024)
    a = pool.empty((4, 1024), torch.float32)
    mem = a.data_ptr()
    row = a[1]
    del a
    b = pool.empty((4, 1024), torch.float32)
    assert b.data_ptr() != mem  # a row view of the old batch is still alive
    del row
    c = pool.empty((4, 1024), torch.float32)
    assert c.data_ptr() == mem and c.shape == (4, 1024) and c.dtype == torch.float32
    arr = c.numpy()  # a numpy view keeps the memory too
    del c
    assert pool.empty((4, 1024), torch.float32).data_ptr() not in (mem, b.data_ptr())
    del arr
    assert pool.empty((2, 1024), torch.float32).shape == (2, 1024)  # another shape: its own buffer
    assert pool.empty((4, 1024), torch.int64).dtype == torch.int64
    assert len(pool.entries) <= 3  # the oldest free buffers are forgotten


# ---- pinned memory and the cross-worker mix
def _group(sizes=(3, 3, 2)):
    import torch

    n = sum(sizes)
    rows = torch.arange(n * 6, dtype=torch.float32).reshape(n, 2, 3)
    group, start = [], 0
    for s in sizes:
        group.append(
            {
                "inputs": rows[start : start + s].clone(),
                "target": torch.arange(start, start + s),
                "extra": {"mask": rows[start : start + s, :, 0] > 10},
                "key": [f"k{i}" for i in range(start, start + s)],
            }
        )
        start += s
    return group, rows


def test_mix_without_pinning_is_the_seeded_redeal():
    import torch

    from datamodules.loader import _mix

    group, rows = _group()
    out = _mix(group, torch.Generator().manual_seed(7), pin=False)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(7))  # the same draw _mix makes
    bounds = [0, 3, 6, 8]
    assert [len(b["key"]) for b in out] == [3, 3, 2]
    for i, b in enumerate(out):
        idx = perm[bounds[i] : bounds[i + 1]]
        assert torch.equal(b["inputs"], rows[idx]) and torch.equal(b["target"], idx)
        assert torch.equal(b["extra"]["mask"], rows[idx, :, 0] > 10)
        assert b["key"] == [f"k{j}" for j in idx.tolist()]
        assert not b["inputs"].is_pinned() and not b["extra"]["mask"].is_pinned()
    assert out[0]["inputs"].data_ptr() != group[0]["inputs"].data_ptr()  # new memory, the inputs untouched


def test_pin_plan_pins_once_and_only_when_asked_and_possible():
    from datamodules.loader import pin_plan

    assert pin_plan(False, 4, "cuda") == (False, False)  # off: no pinning work anywhere
    assert pin_plan(True, 4, None) == (False, False)  # CPU-only / MPS: skipped
    assert pin_plan(True, 4, "cuda") == (False, True)  # mixing: the mix pins its output, the loader does not
    assert pin_plan(True, 1, "cuda") == (True, False)  # no mixing (eval, num_workers <= 1): the loader pins


def test_pin_device_says_whether_pinned_memory_can_be_had():
    import torch

    from datamodules.buffers import pin_device

    if pin_device() is None:  # e.g. this CPU-only build: pinned memory is really unavailable
        with pytest.raises(RuntimeError):
            torch.empty(4, pin_memory=True)
    else:
        assert torch.empty(4, pin_memory=True).is_pinned()


# GPU-only: a CPU-only torch has no pinned memory at all (the test above checks that it says so); run on the GPU
# machine by benchmarks/gpu_check.sh, where a skip counts as a failure.
@pytest.mark.skipif(
    "__import__('datamodules.buffers').buffers.pin_device() is None",
    reason="GPU-only (no pinned memory in a CPU-only torch): run by benchmarks/gpu_check.sh",
)
def test_mix_with_pinning_pins_every_tensor():
    import torch

    from datamodules.buffers import _pinned
    from datamodules.loader import _mix

    group, _ = _group()
    plain = _mix(group, torch.Generator().manual_seed(7))
    pinned = _mix(group, torch.Generator().manual_seed(7), pin=True)
    for a, b in zip(plain, pinned):
        assert b["inputs"].is_pinned() and b["target"].is_pinned() and b["extra"]["mask"].is_pinned()
        assert torch.equal(a["inputs"], b["inputs"]) and a["key"] == b["key"]
    single = _pinned(group[0])
    assert single["inputs"].is_pinned() and single["extra"]["mask"].is_pinned() and single["key"] == group[0]["key"]


def test_train_loader_pinning_decision(tiny):
    """With mixing on, the DataLoader never pins (the mix would re-stack its pinned batches); the mixed
    batches are pinned exactly where pinned memory exists; pin_memory changes no batch content."""
    import warnings

    from datamodules.buffers import pin_device

    def batches(pin):
        dm = make_dm(tiny, num_workers=2, samples_per_epoch=16, shuffle_buffer=8, pin_memory=pin)
        dm.setup("fit")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loader = dm.train_dataloader()
        assert loader.mix == 4 and loader.pin_memory is False  # the DataLoader's own pin thread stays off
        assert loader.pin_mixed == (pin and pin_device() is not None)
        assert any("pin_memory=True" in str(w.message) for w in caught) == (pin and pin_device() is None)
        return list(loader)

    plain, pinned = batches(False), batches(True)
    assert [b["key"] for b in plain] == [b["key"] for b in pinned] and len(plain) == 4
    assert all(b["inputs"].is_pinned() == (pin_device() is not None) for b in pinned)
    assert not any(b["inputs"].is_pinned() for b in plain)
    dm = make_dm(tiny, num_workers=0, pin_memory=True)  # no mixing: the DataLoader pins, where it can
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup("validate")
        assert dm.val_dataloader().pin_memory == (pin_device() is not None)
