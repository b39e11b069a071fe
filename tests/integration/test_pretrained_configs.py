"""Every recipe in configs/pretrained/ runs: each names its weights by path (an HF folder or a checkpoint), so here
the path is a small stand-in of the same family (an HF model saved with save_pretrained, or a real checkpoint of
the quickstart config); data and trainer are shrunk as in test_configs.py. Eval recipes run `validate` (no
--ckpt_path), fine-tuning recipes `fit` for two steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from perceiver_lit.cli import PerceiverCLI
from tests.fixtures.training import write_config
from tests.integration.test_configs import CONFIGS, PRETRAINED, shards, shrink, smoke_overrides  # noqa: F401

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.integration


def stand_in(path: str, tmp_path: Path, shards) -> str:  # noqa: F811
    """A small model of the family `path` names."""
    from tests.unit.test_convert import hf_image_model, hf_mlm

    hf_classes = {
        "vision-perceiver-fourier": "PerceiverForImageClassificationFourier",
        "vision-perceiver-learned": "PerceiverForImageClassificationLearned",
        "vision-perceiver-conv": "PerceiverForImageClassificationConvProcessing",
    }
    out = tmp_path / "weights"
    if path in hf_classes:
        hf_image_model(hf_classes[path]).save_pretrained(out)
    elif path == "language-perceiver":
        hf_mlm().save_pretrained(out)
    elif path == "optical-flow-perceiver":
        from tests.unit.test_convert_dense import hf_flow

        hf_flow(train_size=[16, 16]).save_pretrained(out)
    elif path.endswith("quickstart/checkpoints/best.ckpt"):  # a real checkpoint of the (shrunk) quickstart
        quickstart = CONFIGS / "quickstart.yaml"
        over = smoke_overrides(quickstart, shards, tmp_path / "qs")
        over["trainer"]["max_steps"] = 1
        PerceiverCLI(args=["fit", "--config", str(quickstart), "--config", write_config(tmp_path, over, "qs.yaml")])
        return str(tmp_path / "qs" / "run" / "checkpoints" / "last.ckpt")
    else:
        raise AssertionError(f"no stand-in for {path}: add one")
    return str(out)


@pytest.mark.parametrize("config", PRETRAINED, ids=lambda p: p.name)
def test_pretrained_recipe_runs(config: Path, shards, tmp_path: Path, recwarn):  # noqa: F811
    cfg = yaml.safe_load(config.read_text())
    net = cfg["model"]["init_args"]["net"]
    assert net["class_path"] == "perceiver_lit.models.pretrained"
    over = smoke_overrides(config, shards, tmp_path)
    over["model"]["init_args"]["net"]["init_args"]["path"] = stand_in(net["init_args"]["path"], tmp_path, shards)
    if cfg["data"]["init_args"].get("num_classes") == 5:  # the 5-class subset, written by the recipe's own script
        import glob
        import runpy
        import sys

        argv, sys.argv = sys.argv, ["fashion_mnist_subset.py", "--out", str(tmp_path / "fm5"), "--maxcount", "4000"]
        try:
            runpy.run_path(str(CONFIGS.parent / "scripts" / "fashion_mnist_subset.py"), run_name="__main__")
        finally:
            sys.argv = argv
        for split in ("train", "val", "test"):
            assert glob.glob(str(tmp_path / "fm5" / f"{split}-*.tar")), split
        last = len(glob.glob(str(tmp_path / "fm5" / "train-*.tar"))) - 1
        over["data"]["init_args"].update(
            train_urls=str(tmp_path / "fm5" / f"train-{{000000..{last:06d}}}.tar"),
            val_urls=str(tmp_path / "fm5" / "val-000000.tar"),
            test_urls=str(tmp_path / "fm5" / "test-000000.tar"),
        )
    args = ["--config", str(config), "--config", write_config(tmp_path, over, "smoke.yaml")]
    if "train_urls" in cfg["data"]["init_args"]:
        cli = PerceiverCLI(args=["fit", *args])
        assert cli.trainer.global_step == 2
        assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    else:
        cli = PerceiverCLI(args=["validate", *args])
        assert cli.model.monitor[0] in cli.trainer.callback_metrics  # val/acc1; val/epe for optical flow
        assert not [w for w in recwarn if "untrained" in str(w.message)]
    assert cli.model.num_classes == cli.datamodule.num_classes
