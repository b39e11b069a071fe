"""The permuted-input study in miniature (docs/permutation.md).

1. Same weights, raw vs permuted pixels: a Perceiver whose adapter knows the permutation gives identical logits
   (its elements are the same set of (pixel, position) pairs, reordered, and attention is order-invariant over
   its inputs); a ConvNet's logits change.
2. The real sweep spec (configs/sweeps/local_permutation.yaml) through the real CLI on fixture shards, a few
   steps per trial, its two Perceiver trials only (--trials 2 caps the grid; the ConvNet arm is case 1): trained
   from the same seed on the same samples, raw and permuted end with the same validation loss.
"""

import os

import pytest
import torch
import yaml

from datamodules.image import FashionMNISTDataModule
from perceiver_lit.models import ImageAdapter, Perceiver
from perceiver_lit.models.convnet import ConvNet
from perceiver_lit.sweeps.cli import main as sweep_main
from perceiver_lit.sweeps.report import write_report

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def first_val_batch(shards, permute_seed):
    dm = FashionMNISTDataModule(
        train_urls=shards.train_urls, val_urls=shards.test_urls, batch_size=16, num_workers=0, permute_seed=permute_seed
    )
    dm.setup("validate")
    return next(iter(dm.val_dataloader()))


def perceiver(permute_seed):
    adapter = ImageAdapter((28, 28, 1), num_frequency_bands=4, permute_seed=permute_seed)
    return Perceiver(
        adapter,
        num_classes=10,
        num_latents=8,
        latent_dim=16,
        num_cross_attends=2,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
    ).eval()


def test_perceiver_logits_ignore_the_permutation_convnet_logits_do_not(fashion_shards):
    raw, perm = first_val_batch(fashion_shards, None), first_val_batch(fashion_shards, 7)
    assert raw["key"] == perm["key"]  # the same samples, in the same order
    assert not torch.equal(raw["inputs"], perm["inputs"])
    assert torch.equal(raw["inputs"].flatten(1).sort(1).values, perm["inputs"].flatten(1).sort(1).values)

    torch.manual_seed(0)
    p_raw = perceiver(None)
    p_perm = perceiver(7)
    p_perm.load_state_dict(p_raw.state_dict())
    with torch.no_grad():
        a, b = p_raw(raw["inputs"]), p_perm(perm["inputs"])
        scrambled = p_raw(perm["inputs"])  # positions not told about the permutation: a different model input
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert (a - scrambled).abs().max() > 1e-3

    conv = ConvNet((28, 28, 1), 10, channels=(8, 16)).eval()
    with torch.no_grad():
        c_raw, c_perm = conv(raw["inputs"]), conv(perm["inputs"])
    assert (c_raw - c_perm).abs().max() > 1e-2
    # Analytic FLOPs: 2 x (28*28*1*8*9 + 14*14*8*16*9 + 16*10) multiply-adds; no decay on BatchNorm.
    assert conv.flops_per_sample() == 2 * (28 * 28 * 8 * 9 + 14 * 14 * 8 * 16 * 9 + 16 * 10)
    assert conv.no_weight_decay() == {n for n, p in conv.named_parameters() if p.ndim == 1}


def test_local_permutation_sweep_in_miniature(fashion_shards, tmp_path, monkeypatch):
    spec = yaml.safe_load(open(os.path.join(ROOT, "configs/sweeps/local_permutation.yaml")))
    assert spec["parameters"]["data.init_args.permute_seed"]["values"] == ["null", 0]
    # The same spec, pointed at the fixture shards and cut to 3 steps per trial without a logger.
    spec["command"] += [
        f"--data.init_args.train_urls={fashion_shards.train_urls}",
        f"--data.init_args.val_urls={fashion_shards.test_urls}",
        "--data.init_args.test_urls=null",
        "--data.init_args.batch_size=32",
        "--data.init_args.num_workers=0",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--fast_check=false",
    ]
    spec_file = tmp_path / "local_permutation.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.chdir(ROOT)  # the spec names configs/ relative to the repo root
    sweep_dir = tmp_path / "sweep"
    assert sweep_main(["run", str(spec_file), "--dir", str(sweep_dir), "--trials", "2"]) == 0, "\n".join(
        p.read_text()[-3000:] for p in sweep_dir.glob("trial-*/log.txt")
    )

    rep = write_report(sweep_dir)
    rows = {
        (
            r["params"]["model.init_args.net.class_path"].rsplit(".", 1)[1],
            r["params"]["data.init_args.permute_seed"],
        ): r["metrics"]
        for r in rep["rows"]
    }
    assert set(rows) == {("Perceiver", "null"), ("Perceiver", 0)}
    assert all(0.0 <= m["val/acc1"] <= 1.0 and m["train/loss"] > 0 for m in rows.values())
    # Same seed, same samples, same weights at every step: the permuted Perceiver follows the raw one. (Were the
    # seed not linked into the adapter, the positions would be scrambled and the losses would part.)
    assert abs(rows["Perceiver", "null"]["val/loss"] - rows["Perceiver", 0]["val/loss"]) < 1e-3
    cfg = yaml.safe_load(open(sweep_dir / "trial-1" / "config.yaml"))
    assert cfg["data"]["init_args"]["permute_seed"] == 0
    assert [p.name for p in rep["plots"]] == ["val_acc1_vs_permute_seed.png"]
    assert (sweep_dir / "report.md").read_text().count("| done |") == 2
