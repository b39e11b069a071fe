"""UTF-8 text -> HF Perceiver byte token ids (docs/architecture.md): 0 PAD, 1 BOS, 2 EOS, 3 MASK, 4 CLS, 5 SEP,
byte b -> b + 6 (vocab 262)."""

from __future__ import annotations

import random

import torch

PAD, BOS, EOS, MASK, CLS, SEP = 0, 1, 2, 3, 4, 5
BYTE_OFFSET = 6
VOCAB_SIZE = 262


def encode_bytes(
    data: bytes, max_length: int, add_special: bool = True, rng: random.Random | None = None
) -> torch.Tensor:
    """int64 (max_length,): [CLS] bytes+6 [SEP], PAD after, exactly as HF's PerceiverTokenizer frames a text;
    cropped to fit (a random window if rng, else the start)."""
    room = max_length - 2 if add_special else max_length
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for bytes")
    if len(data) > room:
        start = rng.randrange(len(data) - room + 1) if rng is not None else 0
        data = data[start : start + room]
    ids = torch.tensor(list(data), dtype=torch.int64) + BYTE_OFFSET
    if add_special:
        ids = torch.cat([torch.tensor([CLS]), ids, torch.tensor([SEP])])
    out = torch.full((max_length,), PAD, dtype=torch.int64)
    out[: len(ids)] = ids
    return out


def decode_ids(ids: torch.Tensor) -> str:
    """Token ids -> text (special tokens dropped, invalid UTF-8 replaced)."""
    b = bytes(int(i) - BYTE_OFFSET for i in ids.tolist() if int(i) >= BYTE_OFFSET)
    return b.decode("utf-8", errors="replace")
