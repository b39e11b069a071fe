"""permute_seed: one fixed permutation, the same in every epoch and worker, for every modality's layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.image import FashionMNISTDataModule
from datamodules.transforms.permute import permutation, permute_elements


def test_permutation_is_the_documented_formula():
    expected = torch.randperm(50, generator=torch.Generator().manual_seed(7))
    assert torch.equal(permutation(50, 7), expected)


def test_pixels_move_with_their_channels():
    x = torch.arange(4 * 5 * 3).reshape(4, 5, 3)
    y = permute_elements(x, 1)
    perm = permutation(20, 1)
    assert torch.equal(y.reshape(20, 3), x.reshape(20, 3)[perm])


@pytest.mark.parametrize("shape,dims,block", [((12,), 1, 4), ((6, 8), 2, 1), ((4, 6, 6, 3), 3, (2, 3, 3))])
def test_blocks_stay_whole(shape, dims, block):
    x = torch.arange(int(np.prod(shape))).reshape(shape)
    y = permute_elements(x, 5, element_dims=dims, block=block)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert sorted(y.flatten().tolist()) == list(range(x.numel()))
    if shape == (12,):  # blocks of 4 consecutive samples move as a unit
        assert all(y[i + 1] == y[i] + 1 for i in range(0, 12, 4) for i in (i, i + 1, i + 2))


def test_bad_block_is_rejected():
    with pytest.raises(ValueError, match="not divisible"):
        permute_elements(torch.zeros(10), 0, block=3)


def test_permutation_same_across_epochs_and_workers(fashion_shards):
    def pass_(workers: int, seed: int | None):
        dm = FashionMNISTDataModule(
            val_urls=fashion_shards.test_urls, batch_size=50, num_workers=workers, permute_seed=seed
        )
        dm.setup("validate")
        loader = dm.val_dataloader()
        epochs = []
        for _ in range(2):
            epochs.append({k: x for b in loader for k, x in zip(b["key"], b["inputs"])})
        return epochs

    plain = pass_(0, None)[0]
    e0, e1 = pass_(2, 11)
    w0 = pass_(0, 11)[0]
    assert e0.keys() == plain.keys() == w0.keys()
    perm = permutation(28 * 28, 11)
    for k in list(plain)[:50]:
        assert torch.equal(e0[k], e1[k]) and torch.equal(e0[k], w0[k])  # epochs and worker counts agree
        assert torch.equal(e0[k].reshape(-1, 1), plain[k].reshape(-1, 1)[perm])  # exactly the documented perm
