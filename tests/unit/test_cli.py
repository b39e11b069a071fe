"""The CLI's parse and instantiate stage (no training): links, contradictions, unknown keys, the early check."""

from __future__ import annotations

import pytest
import torch

from perceiver_lit.cli import PerceiverCLI
from perceiver_lit.cli_links import plan_links, prescan
from tests.fixtures.training import TinyNet, tiny_perceiver, write_config

FASHION = {"class_path": "datamodules.image.FashionMNISTDataModule", "init_args": {"batch_size": 4}}


class FixedWidthNet(TinyNet):
    """Takes only num_classes: its input width (5 values) cannot fit Fashion-MNIST's 28x28x1."""

    def __init__(self, num_classes: int = 3) -> None:  # every init arg is linked: no init_args in the config
        super().__init__(num_classes=num_classes, input_shape=(5,))


def _cli(tmp_path, config: dict, *extra: str) -> PerceiverCLI:
    cfg = write_config(tmp_path, config, "exp.yaml")
    return PerceiverCLI(args=["--config", cfg, "--trainer.logger", "false", *extra], run=False)


def test_links_fill_num_classes_and_input_shape(tmp_path):
    cli = _cli(tmp_path, {"model": tiny_perceiver(), "data": FASHION})
    net = cli.model.net
    assert cli.model.num_classes == 10
    assert net.head.out_features == 10
    assert tuple(net.adapter.input_shape) == (28, 28, 1)
    assert cli.config.name == "exp"
    assert cli.config.trainer.default_root_dir.endswith("runs/exp")


def test_permute_seed_is_linked(tmp_path):
    data = {"class_path": FASHION["class_path"], "init_args": {"batch_size": 4, "permute_seed": 7}}
    cli = _cli(tmp_path, {"model": tiny_perceiver(), "data": data})
    # the link is applied when the data module is instantiated: the built adapter and the saved hparams have 7
    assert cli.model.net.adapter.pos.permute_seed == 7
    assert cli.model.hparams["net"]["init_args"]["adapter"]["init_args"]["permute_seed"] == 7
    assert ("permute_seed", "model.init_args.net.init_args.adapter.init_args.permute_seed") in plan_links(
        prescan(["--config", str(tmp_path / "exp.yaml")])[0]
    )


def test_contradicting_user_value_fails_naming_the_field(tmp_path):
    model = tiny_perceiver()
    model["init_args"]["net"]["init_args"]["num_classes"] = 7
    with pytest.raises(
        ValueError,
        match=r"model\.init_args\.net\.init_args\.num_classes=7 contradicts "
        r"data\.num_classes=10",
    ):
        _cli(tmp_path, {"model": model, "data": FASHION})


def test_net_without_adapter_gets_input_shape_directly(tmp_path):
    model = {
        "class_path": "perceiver_lit.tasks.Classification",
        "init_args": {"net": {"class_path": "tests.fixtures.training.TinyNet"}},
    }
    cli = _cli(tmp_path, {"model": model, "data": FASHION})
    assert cli.model.net.input_shape == (28, 28, 1) and cli.model.net.num_classes == 10


def test_model_that_does_not_fit_the_data_fails_before_training(tmp_path):
    model = {
        "class_path": "perceiver_lit.tasks.Classification",
        "init_args": {"net": {"class_path": "tests.unit.test_cli.FixedWidthNet"}},
    }
    with pytest.raises(ValueError, match=r"does not fit the data: model\.init_args\.net \(FixedWidthNet\)"):
        _cli(tmp_path, {"model": model, "data": FASHION})


def test_unknown_key_fails_at_parse(tmp_path, capsys):
    model = tiny_perceiver()
    model["init_args"]["net"]["init_args"]["num_latentz"] = 8
    with pytest.raises(SystemExit) as exit_info:
        _cli(tmp_path, {"model": model, "data": FASHION})
    assert exit_info.value.code == 2  # argparse's usage error, not a clean exit
    assert "num_latentz" in capsys.readouterr().err


def test_auto_optimizer_arguments_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli(tmp_path, {"model": tiny_perceiver(), "data": FASHION}, "--optimizer", "torch.optim.SGD")
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --optimizer" in capsys.readouterr().err


def test_float32_matmul_precision_is_checked_and_leaves_cpu_runs_in_fp32(tmp_path, capsys):
    before = torch.get_float32_matmul_precision()
    cli = _cli(tmp_path, {"model": tiny_perceiver(), "data": FASHION}, "--float32_matmul_precision", "medium")
    assert cli.config.float32_matmul_precision == "medium"
    assert torch.get_float32_matmul_precision() == before == "highest"  # applied on CUDA devices only
    with pytest.raises(SystemExit) as exit_info:
        _cli(tmp_path, {"model": tiny_perceiver(), "data": FASHION}, "--float32_matmul_precision", "tf32")
    assert exit_info.value.code == 2
    assert "float32_matmul_precision" in capsys.readouterr().err


def test_print_config(tmp_path, capsys):
    cfg = write_config(tmp_path, {"model": tiny_perceiver(), "data": FASHION}, "exp.yaml")
    with pytest.raises(SystemExit) as exit_info:
        PerceiverCLI(args=["fit", "--config", cfg, "--print_config"])
    assert exit_info.value.code in (0, None)  # sys.exit() after printing: success
    out = capsys.readouterr().out
    assert "class_path: perceiver_lit.tasks.Classification" in out and "num_latents: 8" in out


def test_prescan_reads_configs_and_overrides(tmp_path):
    cfg = write_config(tmp_path, {"model": tiny_perceiver()}, "a.yaml")
    tree, configs = prescan(["fit", "--config", cfg, "--model.init_args.net.init_args.num_classes=3"])
    assert configs == [cfg]
    assert tree["model"]["init_args"]["net"]["init_args"]["num_classes"] == 3
    assert tree["model"]["init_args"]["net"]["class_path"] == "perceiver_lit.models.Perceiver"


def test_fast_check_runs_on_meta_without_touching_weights(tmp_path):
    cli = _cli(tmp_path, {"model": tiny_perceiver(), "data": FASHION})
    assert all(p.device.type == "cpu" for p in cli.model.parameters())
    assert torch.isfinite(cli.model.net.latents).all()


def test_without_wandb_falls_back_to_csv_with_a_message(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger
    from lightning_utilities.core.imports import RequirementCache

    import perceiver_lit.cli_logger as cli_module

    # A real requirement check for a package that is not installed stands in for "wandb missing".
    monkeypatch.setattr(cli_module, "_WANDB_AVAILABLE", RequirementCache("wandb-is-not-installed-here"))
    cfg = write_config(tmp_path, {"model": tiny_perceiver(), "data": FASHION}, "exp.yaml")
    with pytest.warns(UserWarning, match="wandb is not installed"):
        cli = PerceiverCLI(args=["--config", cfg, "--trainer.default_root_dir", str(tmp_path / "run")], run=False)
    assert isinstance(cli.trainer.logger, CSVLogger)
    assert cli.trainer.logger.save_dir == str(tmp_path / "run")


def test_default_logger_is_wandb_offline(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = write_config(tmp_path, {"model": tiny_perceiver(), "data": FASHION}, "exp.yaml")
    cli = PerceiverCLI(
        args=[
            "--config",
            cfg,
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            "--wandb.group",
            "g",
            "--wandb.tags",
            "[a, b]",
        ],
        run=False,
    )
    logger = cli.trainer.logger
    assert isinstance(logger, WandbLogger)
    assert logger._offline and logger._wandb_init["group"] == "g"
    assert logger._wandb_init["name"] == "exp" and logger._wandb_init["tags"] == ["a", "b"]


def test_evaluating_without_a_checkpoint_warns_that_the_weights_are_untrained(tmp_path, fashion_shards):
    from tests.fixtures.training import fashion_data, run_cli

    cfg = write_config(tmp_path, {"model": tiny_perceiver(), "data": fashion_data(fashion_shards)}, "exp.yaml")
    with pytest.warns(
        UserWarning,
        match=r"test without --ckpt_path evaluates the model's initial \(untrained\) "
        r"weights; pass --ckpt_path .*checkpoints/best.ckpt",
    ):
        run_cli(
            [
                "test",
                "--config",
                cfg,
                "--trainer.logger",
                "false",
                "--trainer.limit_test_batches",
                "1",
                "--trainer.default_root_dir",
                str(tmp_path / "run"),
            ]
        )
