"""Text: fortunes -> shards -> byte ids in HF's layout + pad_mask; labels for classification; MLM mode."""

from __future__ import annotations

import random

import pytest
import torch

from datamodules.text import TextDataModule
from datamodules.transforms import text as T


def test_byte_layout_matches_hf_tokenizer():
    tokenizers = pytest.importorskip("transformers.models.perceiver.tokenization_perceiver")
    tok = tokenizers.PerceiverTokenizer()
    text = "Héllo, wörld! ∑"
    ours = T.encode_bytes(text.encode("utf-8"), 32)
    hf = tok(text, padding="max_length", max_length=32)["input_ids"]
    assert ours.tolist() == hf
    assert T.decode_ids(ours) == text


def test_crop_random_window_in_training():
    data = bytes(range(32, 127))
    eval_ids = T.encode_bytes(data, 10)
    assert eval_ids[0] == T.CLS and eval_ids[-1] == T.SEP and eval_ids[1] == 32 + 6
    windows = {tuple(T.encode_bytes(data, 10, rng=random.Random(s)).tolist()) for s in range(5)}
    assert len(windows) > 1


def test_fortunes_classification_round_trip(fortune_shards):
    dm = TextDataModule(
        train_urls=fortune_shards.train_urls,
        val_urls=fortune_shards.val_urls,
        max_length=128,
        num_classes=fortune_shards.num_classes,
        batch_size=16,
        num_workers=0,
    )
    assert dm.input_shape == (128,) and dm.num_classes == 3
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["inputs"].shape == (16, 128) and b["inputs"].dtype == torch.int64
    assert b["pad_mask"].dtype == torch.bool and (b["pad_mask"] == (b["inputs"] == T.PAD)).all()
    assert b["inputs"].max() < T.VOCAB_SIZE and b["target"].dtype == torch.int64
    val = list(dm.val_dataloader())
    assert sum(len(v["key"]) for v in val) == fortune_shards.num_val
    assert set(torch.cat([v["target"] for v in val]).tolist()) == {0, 1, 2}
    assert any(v["pad_mask"].any() for v in val)  # short fortunes are padded


def test_mlm_mode_needs_no_label(fortune_shards):
    dm = TextDataModule(val_urls=fortune_shards.val_urls, max_length=64, batch_size=8, num_workers=0, permute_seed=3)
    assert dm.num_classes == T.VOCAB_SIZE
    dm.setup("validate")
    b = next(iter(dm.val_dataloader()))
    assert torch.equal(b["target"], b["inputs"])  # the task masks; target is the (permuted) ids
    assert (b["pad_mask"] == (b["inputs"] == T.PAD)).all()
    assert (b["inputs"][:, 0] != T.CLS).any()  # permuted: CLS is no longer always first
