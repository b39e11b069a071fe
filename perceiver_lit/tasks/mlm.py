"""Perceiver IO masked byte modelling: BERT-style masking of UTF-8 bytes, loss on the masked positions only.

Token layout is HF's (docs/architecture.md): 0 PAD, 1 BOS, 2 EOS, 3 MASK, 4 CLS, 5 SEP, byte b -> b + 6; vocab 262.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from perceiver_lit.tasks.base import Task

PAD_ID, MASK_ID, NUM_SPECIAL, VOCAB_SIZE = 0, 3, 6, 262
IGNORE = -100


def mask_tokens(
    tokens: torch.Tensor,
    pad_mask: torch.Tensor | None = None,
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
    vocab_size: int = VOCAB_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking. tokens int64 (B, L) -> (corrupted inputs (B, L), labels (B, L) with IGNORE where unmasked).

    Picks each byte token (id >= 6; padding and special tokens never) with probability `mask_prob`; of those,
    80% become MASK, 10% a random byte, 10% stay as they are.
    """
    gen_device = generator.device if generator is not None else tokens.device

    def rand(shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=gen_device).to(tokens.device)

    candidates = tokens >= NUM_SPECIAL
    if pad_mask is not None:
        candidates &= ~pad_mask
    chosen = candidates & (rand(tokens.shape) < mask_prob)
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE))
    roll = rand(tokens.shape)
    to_mask = chosen & (roll < 0.8)
    to_random = chosen & (roll >= 0.8) & (roll < 0.9)
    random_bytes = torch.randint(NUM_SPECIAL, vocab_size, tokens.shape, generator=generator, device=gen_device).to(
        tokens.device
    )
    inputs = torch.where(to_mask, torch.full_like(tokens, MASK_ID), tokens)
    inputs = torch.where(to_random, random_bytes, inputs)
    return inputs, labels


class MaskedByteModelling(Task):
    """Batch `{"inputs": int64 (B, L), "pad_mask": bool (B, L)}` -> logits (B, L, vocab).

    Logs `train/loss`, `val/loss`, `val/mlm_acc`, `test/loss`, `test/mlm_acc` (accuracy over masked positions).
    Validation and test masks are drawn from a generator seeded by the batch index, so they are the same every
    epoch and the numbers compare across epochs.
    """

    monitor = ("val/mlm_acc", "max")

    def __init__(self, net: nn.Module, mask_prob: float = 0.15, eval_seed: int = 1234, **kwargs: Any) -> None:
        kwargs.setdefault("num_classes", getattr(net, "num_classes", VOCAB_SIZE))
        super().__init__(net, **kwargs)
        self.mask_prob, self.eval_seed = mask_prob, eval_seed
        self.metrics = nn.ModuleDict(
            {
                f"{s}_metrics": MulticlassAccuracy(self.num_classes, average="micro", ignore_index=IGNORE)
                for s in ("val", "test")
            }
        )

    def shared_step(self, batch: dict, stage: str, batch_idx: int) -> torch.Tensor:
        tokens, pad_mask = batch["inputs"], batch.get("pad_mask")
        gen = None
        if stage != "train":
            gen = torch.Generator().manual_seed(self.eval_seed + batch_idx)
        inputs, labels = mask_tokens(tokens, pad_mask, self.mask_prob, gen, self.num_classes)
        logits = self(inputs, pad_mask)  # (B, L, vocab)
        # Mean over the masked positions, written without a branch on their count (a branch would make the host
        # wait for the device every step); nothing masked (a tiny batch) gives a zero loss that keeps the graph.
        num_masked = (labels != IGNORE).sum().clamp(min=1)
        loss = (
            F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
            / num_masked
        )
        batch_size = tokens.shape[0]
        self.log_loss(stage, loss, batch_size)
        if f"{stage}_metrics" in self.metrics:
            metric = self.metrics[f"{stage}_metrics"]
            metric.update(logits.detach().flatten(0, 1), labels.flatten())
            self.log(f"{stage}/mlm_acc", metric, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)
        return loss
