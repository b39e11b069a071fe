"""Tasks: metrics equal hand computations, masking statistics, MixUp/CutMix, the NaN guard, epoch->step schedules."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from perceiver_lit.callbacks import NanGuard, NonFiniteLossError
from perceiver_lit.tasks import Classification, MaskedByteModelling, MultilabelClassification, mask_tokens
from perceiver_lit.tasks.mixing import MixUpCutMix
from tests.fixtures.training import TinyNet, TinyTokenNet


def _trainer(**kw) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kw,
    )


def _batches(n_batches: int, bs: int, num_classes: int, multilabel: bool = False, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        target = (
            (torch.rand(bs, num_classes, generator=g) < 0.3).float()
            if multilabel
            else torch.randint(num_classes, (bs,), generator=g)
        )
        out.append(
            {"inputs": torch.randn(bs, 4, 3, generator=g), "target": target, "key": [f"s{i}-{j}" for j in range(bs)]}
        )
    return out


def _loader(batches: list[dict]):
    return torch.utils.data.DataLoader(batches, batch_size=None)


def test_classification_val_metrics_equal_hand_computation():
    torch.manual_seed(0)
    task = Classification(TinyNet(num_classes=7), label_smoothing=0.1)
    batches = _batches(3, 10, 7)
    metrics = _trainer().validate(task, dataloaders=_loader(batches), verbose=False)[0]
    with torch.no_grad():
        logits = torch.cat([task.net(b["inputs"]) for b in batches])
    target = torch.cat([b["target"] for b in batches])
    top5 = logits.topk(5, dim=-1).indices
    assert metrics["val/acc1"] == pytest.approx((logits.argmax(-1) == target).float().mean().item(), abs=1e-6)
    assert metrics["val/acc5"] == pytest.approx((top5 == target[:, None]).any(-1).float().mean().item(), abs=1e-6)
    assert metrics["val/loss"] == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.1).item(), abs=1e-5)


def _average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AP of one class by hand: mean over positives of the precision at each positive's rank."""
    order = scores.argsort(descending=True)
    hits = labels[order]
    precision_at = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return (precision_at * hits).sum().item() / hits.sum().item()


def test_multilabel_map_equals_hand_computation():
    torch.manual_seed(0)
    task = MultilabelClassification(TinyNet(num_classes=4))
    batches = _batches(2, 16, 4, multilabel=True)
    metrics = _trainer().validate(task, dataloaders=_loader(batches), verbose=False)[0]
    with torch.no_grad():
        logits = torch.cat([task.net(b["inputs"]) for b in batches])
    target = torch.cat([b["target"] for b in batches])
    expected = sum(_average_precision(logits[:, c], target[:, c]) for c in range(4)) / 4
    assert metrics["val/mAP"] == pytest.approx(expected, abs=1e-5)
    assert metrics["val/loss"] == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item(), abs=1e-5)


def test_mask_tokens_statistics():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(6, 262, (64, 512), generator=g)
    tokens[:, :2] = torch.tensor([1, 4])  # BOS, CLS: special, never masked
    pad = torch.zeros_like(tokens, dtype=torch.bool)
    pad[:, 400:] = True
    tokens[pad] = 0
    inputs, labels = mask_tokens(tokens, pad, 0.15, generator=g)
    chosen = labels != -100
    eligible = (~pad) & (tokens >= 6)
    assert not (chosen & ~eligible).any()
    assert chosen.sum().item() / eligible.sum().item() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[chosen], tokens[chosen])
    frac_mask = (inputs[chosen] == 3).float().mean().item()
    frac_same = (inputs[chosen] == tokens[chosen]).float().mean().item()
    assert frac_mask == pytest.approx(0.8, abs=0.02)
    assert frac_same == pytest.approx(0.1 + 0.1 / 256, abs=0.02)  # kept, plus random draws of the same byte
    assert torch.equal(inputs[~chosen], tokens[~chosen])
    assert ((inputs >= 6) | (inputs <= 4)).all()


def test_mlm_loss_is_on_masked_positions_only():
    torch.manual_seed(0)
    task = MaskedByteModelling(TinyTokenNet())
    tokens = torch.randint(6, 262, (4, 32))
    pad = torch.zeros_like(tokens, dtype=torch.bool)
    batch = {"inputs": tokens, "pad_mask": pad, "target": torch.full((4,), -1), "key": list("abcd")}
    metrics = _trainer().validate(task, dataloaders=_loader([batch]), verbose=False)[0]
    inputs, labels = mask_tokens(tokens, pad, 0.15, torch.Generator().manual_seed(task.eval_seed + 0))
    with torch.no_grad():
        logits = task.net(inputs)
    m = labels != -100
    assert metrics["val/loss"] == pytest.approx(F.cross_entropy(logits[m], labels[m]).item(), abs=1e-5)
    assert metrics["val/mlm_acc"] == pytest.approx((logits[m].argmax(-1) == labels[m]).float().mean().item(), abs=1e-6)


def test_mlm_batch_with_nothing_masked_gives_a_zero_loss_that_backpropagates():
    torch.manual_seed(0)
    task = MaskedByteModelling(TinyTokenNet(), mask_prob=0.0)
    tokens = torch.randint(6, 262, (2, 8))
    batch = {"inputs": tokens, "pad_mask": torch.zeros_like(tokens, dtype=torch.bool)}
    loss = task.shared_step(batch, "train", 0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    grads = [p.grad for p in task.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)


def test_mixup_and_cutmix_soft_targets():
    torch.manual_seed(0)
    x = torch.randn(8, 6, 6, 1)
    y = torch.arange(8) % 3
    mixed, soft = MixUpCutMix(mixup_alpha=0.2)(x, y, 3)
    assert soft.shape == (8, 3) and torch.allclose(soft.sum(-1), torch.ones(8))
    assert not torch.equal(mixed, x)
    # CutMix: the soft target weight equals the fraction of pixels kept from the sample itself.
    x = torch.arange(8.0)[:, None, None, None].expand(8, 6, 6, 1).contiguous()
    y = torch.arange(8)
    mixed, soft = MixUpCutMix(cutmix_alpha=1.0)(x, y, 8)
    kept = (mixed == x).float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(soft[torch.arange(8), y], kept)


def test_training_with_mixing_and_lamb_runs_and_logs():
    torch.manual_seed(0)
    task = Classification(
        TinyNet(num_classes=5),
        mixup_alpha=0.2,
        cutmix_alpha=0.2,
        optimizer="lamb",
        schedule="step",
        decay_epochs=[1],
        lr=0.01,
    )
    trainer = _trainer(max_epochs=2)
    trainer.fit(task, train_dataloaders=_loader(_batches(3, 8, 5)), val_dataloaders=_loader(_batches(1, 8, 5)))
    assert trainer.global_step == 6
    assert {"train/loss_epoch", "val/acc1", "val/acc5"} <= set(trainer.callback_metrics)
    # step decay at epoch 1 = step 3: after 6 steps the lr is lr/10
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.001)


class _NaNNet(TinyNet):
    def forward(self, inputs, pad_mask=None):
        return super().forward(inputs) * float("nan")


def test_nan_guard_names_step_and_keys():
    task = Classification(_NaNNet(num_classes=5), schedule="constant")
    trainer = _trainer(max_epochs=1, callbacks=[NanGuard()])
    with pytest.raises(NonFiniteLossError, match=r"global step 0 .*s0-0"):
        trainer.fit(task, train_dataloaders=_loader(_batches(2, 4, 5)))


def test_cosine_schedule_converts_epochs_to_steps():
    torch.manual_seed(0)
    task = Classification(TinyNet(num_classes=5), schedule="cosine", flat_epochs=1, lr=1.0)
    trainer = _trainer(max_epochs=2)
    trainer.fit(task, train_dataloaders=_loader(_batches(4, 4, 5)))
    sched = trainer.lr_scheduler_configs[0].scheduler
    # 4 steps per epoch, flat 4 steps, cosine over the remaining 4: after 8 steps the lr is 0
    assert sched.lr_lambdas[0].flat_steps == 4 and sched.lr_lambdas[0].total_steps == 8
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_requires_decay_epochs():
    with pytest.raises(ValueError, match="decay_epochs"):
        Classification(TinyNet(), schedule="step")


def test_configure_model_without_mesh_leaves_net():
    task = Classification(TinyNet())
    net = task.net
    task.configure_model()
    assert task.net is net


def _constant_images(b: int, side: int = 16) -> torch.Tensor:
    """Image i is the constant i + 1 (B, side, side, 1): every pixel tells which images it came from."""
    return (torch.arange(b, dtype=torch.float32) + 1)[:, None, None, None].expand(b, side, side, 1).contiguous()


def test_split_mixing_is_deepminds_half_mixup_half_cutmix_with_a_ratio_per_sample():
    b = 16
    x, y = _constant_images(b), torch.arange(b)
    mixing = MixUpCutMix(mixup_alpha=0.2, cutmix_alpha=1.0, mode="split")
    mixed, soft = mixing(x, y, b, gen=torch.Generator().manual_seed(0))
    assert torch.allclose(soft.sum(-1), torch.ones(b))
    own = soft[torch.arange(b), y]  # weight of each sample's own label
    first, second = mixed[: b // 2], mixed[b // 2 :]
    # MixUp half: every pixel is the same blend own * lam + partner * (1 - lam), lam = the target's own weight.
    assert (first == first[:, :1, :1]).all()
    partner = (soft - own[:, None] * F.one_hot(y, b)).argmax(-1)  # the other label (any, if own = 1)
    blend = own * (y + 1) + (1 - own) * (partner + 1)
    torch.testing.assert_close(first[:, 0, 0, 0], blend[: b // 2])
    assert own[: b // 2].unique().numel() > 1  # a ratio per sample, not per batch
    # CutMix half: pixels are either the sample's own or its partner's, and the own weight is the kept area.
    kept = (second == x[b // 2 :]).float().mean(dim=(1, 2, 3))
    torch.testing.assert_close(own[b // 2 :], kept)
    pasted = second == (partner[b // 2 :] + 1).float()[:, None, None, None]
    assert ((second == x[b // 2 :]) | pasted).all() and not torch.equal(second, x[b // 2 :])
    # Reproducible from the generator alone, and the global RNG is left alone.
    state = torch.get_rng_state()
    again, soft_again = mixing(x, y, b, gen=torch.Generator().manual_seed(0))
    assert torch.equal(again, mixed) and torch.equal(soft_again, soft)
    assert torch.equal(torch.get_rng_state(), state)


def test_cutmix_alpha_one_draws_a_uniform_area_where_alpha_point_two_draws_near_whole_images():
    """DeepMind's CutMix area is uniform (Beta(1, 1)); Beta(0.2, 0.2) leaves most boxes tiny or whole."""
    from perceiver_lit.tasks.mixing import _beta

    gen = torch.Generator().manual_seed(0)
    uniform, peaked = _beta(1.0, 20000, gen), _beta(0.2, 20000, gen)
    assert abs(uniform.mean().item() - 0.5) < 0.01 and abs((uniform > 0.9).float().mean().item() - 0.1) < 0.01

    def one_image(lam):  # the fraction of pairs with >90% from one image
        return (torch.maximum(lam, 1 - lam) > 0.9).float().mean().item()

    assert abs(one_image(uniform) - 0.2) < 0.015 and one_image(peaked) > 0.45


def test_switch_mixing_applies_one_method_with_one_ratio_to_the_whole_batch():
    b = 8
    x, y = _constant_images(b), torch.arange(b)
    seen = set()
    for seed in range(8):
        mixed, soft = MixUpCutMix(mixup_alpha=0.2, cutmix_alpha=1.0, mode="switch")(
            x, y, b, gen=torch.Generator().manual_seed(seed)
        )
        own = soft[torch.arange(b), y]
        if torch.equal(mixed, mixed.round()):  # CutMix: every pixel is some image's own value
            seen.add("cutmix")
        else:  # MixUp: whole images blended, by one ratio for the batch
            seen.add("mixup")
            assert (mixed == mixed[:, :1, :1]).all()
            assert own[own < 1].unique().numel() == 1  # (a sample paired with itself keeps weight 1)
    assert seen == {"cutmix", "mixup"}


def test_mix_mode_is_validated():
    with pytest.raises(ValueError, match="mix_mode"):
        Classification(TinyNet(), mixup_alpha=0.2, mix_mode="both")


class _BatchDataModule(pl.LightningDataModule):
    """A real data module with a per-device `batch_size`, as the project's data modules have."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return _loader(_batches(2, self.batch_size, 5))


def test_fit_warns_when_the_global_batch_is_not_the_recipes(recwarn):
    torch.manual_seed(0)
    task = Classification(TinyNet(num_classes=5), schedule="constant", lr=0.004, reference_batch_size=1024)
    with pytest.warns(
        UserWarning,
        match=r"Global batch 8 = 4 per device .* x 2 accumulated .*reference_batch_size"
        r".*--model.init_args.lr 3.13e-05",
    ):
        _trainer(max_epochs=1, accumulate_grad_batches=2).fit(task, datamodule=_BatchDataModule(4))
    assert task.global_batch_size()[0] == 8
    recwarn.clear()
    task = Classification(TinyNet(num_classes=5), schedule="constant", reference_batch_size=8)
    _trainer(max_epochs=1, accumulate_grad_batches=2).fit(task, datamodule=_BatchDataModule(4))
    assert not [w for w in recwarn if "Global batch" in str(w.message)]


def test_warmup_in_steps():
    torch.manual_seed(0)
    task = Classification(TinyNet(num_classes=5), schedule="constant", lr=1.0, warmup_steps=4)
    trainer = _trainer(max_steps=1)
    trainer.fit(task, train_dataloaders=_loader(_batches(2, 4, 5)))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="give one of the two"):
        Classification(TinyNet(), warmup_steps=4, warmup_epochs=0.5)
