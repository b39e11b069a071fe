"""Every config in configs/ is smoke-tested: parsed, then trained for two steps on tiny real data.

Configs are found by glob, so configs added later are picked up. How a config is shrunk:
- data: chosen by the config's data class (not its directory): Fashion-MNIST / JPEG shards for images, the
  synthetic shards of `perceiver-lit-shards synthetic` for audio, video, audio+video, point clouds and text; the
  per-modality sizes in DATA_OVERRIDES make the inputs tiny;
- model: `shrink()` walks the net's init_args and makes every width, depth and head count tiny, keeping the
  structure (adapter, sharing, queries, output head) the config chose;
- trainer: two steps, one validation batch; nothing else of the shipped trainer settings is changed. A recipe
  that ships bf16 (the paper recipes: bf16-mixed with LAMB and clipping) runs under configs/trainer/cpu_bf16.yaml
  layered after it, as that preset's comment tells users to; the others run at the precision they ship. The
  default logger stays on (W&B offline, with its callbacks: RunConfig, AttentionMaps, PerClassTable, GradNorm).
- workers: every config runs with the DataLoader workers it ships (the quickstart: 0; the local configs, one per
  modality: 1), capped at the eval split's shard count (exact eval needs a shard per worker) and at 2 (this
  machine's cores): the paper recipes ship 8 and run with 1 or 2.
Paper-scale nets are additionally built at full size on the meta device and compared with the models helper's
presets (parameter counts from the papers / HF).
Trainer presets (configs/trainer/) run on top of configs/local/image.yaml when they are CPU-only and
single-process; the others (GPU, multi-process DDP/FSDP) are parsed only: this machine has no GPU and
multi-process runs are the cluster tests' job. Sweep specs (configs/sweeps/) are the sweep tool's input, not CLI
configs: they are checked to load as YAML mappings here and exercised by the sweep tests.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from datamodules.sources import expand_urls
from perceiver_lit.cli import PerceiverCLI
from tests.fixtures.training import write_config

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL = sorted(p for p in CONFIGS.rglob("*.yaml"))
TRAINER_PRESETS = [p for p in ALL if p.parent.name == "trainer"]
SWEEPS = [p for p in ALL if "sweeps" in p.relative_to(CONFIGS).parts]
# configs/pretrained/ name pretrained weights by path: tests/integration/test_pretrained_configs.py runs them on
# stand-ins of the same families.
PRETRAINED = [p for p in ALL if "pretrained" in p.relative_to(CONFIGS).parts]
RUNNABLE = [p for p in ALL if p not in TRAINER_PRESETS and p not in SWEEPS and p not in PRETRAINED]
BASE_FOR_PRESETS = CONFIGS / "local" / "image.yaml"

CPU_BF16 = CONFIGS / "trainer" / "cpu_bf16.yaml"
# Only the run's length is changed: precision, logger, accelerator and the callbacks stay as shipped.
TRAINER = {
    "max_steps": 2,
    "max_epochs": 1,
    "limit_train_batches": 2,
    "limit_val_batches": 1,
    "limit_test_batches": 1,
    "num_sanity_val_steps": 0,
    "val_check_interval": 1.0,
    "log_every_n_steps": 1,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
DATA_COMMON = {"batch_size": 2, "samples_per_epoch": 4, "shuffle_buffer": 4, "mix_batches": 1}
MAX_WORKERS_HERE = 2  # this machine's cores

# data class name -> (shards to use, tiny sizes). "fashion"/"jpeg" are the data fixtures; others are modalities
# of the synthetic writer.
DATA_OVERRIDES: dict[str, tuple[str, dict[str, Any]]] = {
    "FashionMNISTDataModule": ("fashion", {}),
    "ImageDataModule": ("jpeg", {"image_size": 32}),
    "AudioDataModule": (
        "audio",
        {"sample_rate": 16000, "clip_samples": 1280, "num_classes": 10, "multilabel": True, "features": "raw"},
    ),
    "VideoDataModule": (
        "video",
        {"num_frames": 4, "frame_stride": 1, "crop_size": 16, "short_side": None, "num_classes": 10},
    ),
    "AudioVisualDataModule": (
        "audiovisual",
        {
            "num_frames": 4,
            "frame_stride": 1,
            "fps": 10.0,
            "crop_size": 16,
            "short_side": None,
            "sample_rate": 16000,
            "clip_samples": None,
            "num_classes": 10,
            "features": "raw",
        },
    ),
    "PointCloudDataModule": ("pointcloud", {"num_points": 64, "num_classes": 5}),
    "TextDataModule": ("text", {"max_length": 64}),
    "FlowDataModule": ("flow", {"crop_size": 16}),
}

# Per-directory extras on top of the above (a later config directory with special needs adds a row here).
DIR_OVERRIDES: dict[str, dict[str, Any]] = {
    "language": {},
    "imagenet": {},
}


def shrink(net: dict[str, Any]) -> dict[str, Any]:
    """Tiny widths/depths/heads for any net config, keeping its structure (class paths, sharing, head type)."""
    net = copy.deepcopy(net)
    args = net.setdefault("init_args", {})
    rules = {"num_latents": 8, "latent_dim": 16, "num_self_attends_per_block": 1}
    for key, value in rules.items():
        if key in args:
            args[key] = value
    for key in ("num_blocks", "num_cross_attends"):
        if isinstance(args.get(key), int):
            args[key] = min(args[key], 2)
    for key in list(args):
        if key.endswith("_heads") and isinstance(args[key], int):
            args[key] = min(args[key], 2)
        elif key.endswith("qk_channels") and args[key] is not None:
            args[key] = 8
        elif key.endswith("v_channels") and args[key] is not None:
            args[key] = 16
    adapter = args.get("adapter")
    if isinstance(adapter, dict):
        a = adapter.setdefault("init_args", {})
        a.update({"num_frequency_bands": 2} if "num_frequency_bands" in a else {})
        if "num_channels" in a:
            a["num_channels"] = 16
        if a.get("max_seq_len") is not None:
            a["max_seq_len"] = 64
        for sub in (a.get("adapters") or {}).values():  # MultimodalAdapter: per-modality kwargs
            if isinstance(sub, dict) and "num_frequency_bands" in sub:
                sub["num_frequency_bands"] = 2
    queries = args.get("queries")
    if isinstance(queries, dict):
        q = queries.setdefault("init_args", {})
        if "num_channels" in q:
            q["num_channels"] = 16
        if q.get("match_input_length"):
            q["num_queries"] = 64
    return net


def smoke_overrides(config_path: Path, shards: dict[str, tuple[str, str]], tmp_path: Path) -> dict[str, Any]:
    cfg = yaml.safe_load(config_path.read_text())
    data_class = cfg["data"]["class_path"].rsplit(".", 1)[-1]
    source, sizes = DATA_OVERRIDES[data_class]
    train_urls, eval_urls = shards[source]
    data_args = {**DATA_COMMON, **sizes, "train_urls": train_urls, "val_urls": eval_urls, "test_urls": eval_urls}
    shipped_workers = cfg["data"].get("init_args", {}).get("num_workers", 0)
    cap = min(MAX_WORKERS_HERE, len(expand_urls(eval_urls)))
    if shipped_workers > cap:  # the paper recipes' 8 (see the module docstring)
        data_args["num_workers"] = cap
    if data_class == "TextDataModule" and cfg["data"].get("init_args", {}).get("num_classes") is not None:
        data_args["num_classes"] = len(
            json.loads((Path(train_urls.split("::")[0]).parent / "classes.json").read_text())
        )
    out = {
        "trainer": {**TRAINER, "default_root_dir": str(tmp_path / "run")},
        "model": {"init_args": {"net": shrink(cfg["model"]["init_args"]["net"])}},
        "data": {"init_args": data_args},
    }
    extra = DIR_OVERRIDES.get(config_path.parent.name, {})
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


@pytest.fixture
def shards(fashion_shards, jpeg_shards, synthetic_shards, request):
    class Lazy(dict):
        def __missing__(self, key):
            if key == "fashion":
                return fashion_shards.train_urls, fashion_shards.test_urls
            if key == "jpeg":
                return jpeg_shards.train_urls, jpeg_shards.test_urls
            return synthetic_shards(key)

    return Lazy()


def _finite(x: Any) -> bool:
    return math.isfinite(float(x))


def ships_bf16(config: Path) -> bool:
    return str((yaml.safe_load(config.read_text()).get("trainer") or {}).get("precision", "")).startswith("bf16")


def test_smoke_runs_cover_workers_and_bf16(shards, tmp_path):
    """What the smoke runs below cover: DataLoader workers for each data class, and bf16 for every paper recipe
    (so cpu_bf16 is exercised with LAMB and clipping)."""
    workers = {}
    for p in RUNNABLE:
        shipped = yaml.safe_load(p.read_text())["data"]
        run = smoke_overrides(p, shards, tmp_path)["data"]["init_args"].get(
            "num_workers", shipped["init_args"].get("num_workers", 0)
        )
        assert run == shipped["init_args"].get("num_workers", 0) or run == 2 or run == 1, (p, run)
        workers.setdefault(shipped["class_path"].rsplit(".", 1)[-1], []).append(run)
    assert set(workers) == set(DATA_OVERRIDES)
    assert all(max(runs) >= 1 for runs in workers.values()), workers
    paper = [p for p in RUNNABLE if p.parent.name in ("imagenet", "audioset", "modelnet40", "language")]
    assert len(paper) == 7 and all(ships_bf16(p) for p in paper)


@pytest.mark.parametrize("config", RUNNABLE, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_trains_two_steps(config: Path, shards, tmp_path: Path):
    from lightning.pytorch.loggers import WandbLogger

    from perceiver_lit.callbacks import AttentionMaps, GradNorm, PerClassTable, RunConfig

    smoke = smoke_overrides(config, shards, tmp_path)
    override = write_config(tmp_path, smoke, "smoke.yaml")
    preset = ["--config", str(CPU_BF16)] if ships_bf16(config) else []
    cli = PerceiverCLI(args=["fit", "--config", str(config), *preset, "--config", override])
    assert cli.trainer.global_step == 2
    shipped = yaml.safe_load(config.read_text())
    assert cli.trainer.precision == (shipped.get("trainer") or {}).get("precision", "32-true")
    assert cli.datamodule.num_workers == smoke["data"]["init_args"].get(
        "num_workers", shipped["data"]["init_args"].get("num_workers")
    )
    assert isinstance(cli.trainer.logger, WandbLogger) and cli.trainer.logger._offline
    for callback in (RunConfig, AttentionMaps, PerClassTable, GradNorm):
        assert any(isinstance(cb, callback) for cb in cli.trainer.callbacks), callback.__name__
    monitor, _ = cli.model.monitor
    assert monitor in cli.trainer.callback_metrics, sorted(cli.trainer.callback_metrics)
    assert _finite(cli.trainer.callback_metrics["train/loss_epoch"])
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


# Paper configs at full size, on the meta device: the net the config builds is the preset's net.
PRESET_OF = {
    "imagenet/perceiver.yaml": ("perceiver_imagenet", (224, 224, 3), 1000, 44_914_302),
    "imagenet/perceiver_io.yaml": ("perceiver_io_imagenet", (224, 224, 3), 1000, 48_440_627),
    "modelnet40/perceiver.yaml": ("perceiver_modelnet40", (2048, 3), 40, None),
    "audioset/audio.yaml": ("perceiver_audioset", (61440,), 527, None),
    "audioset/video.yaml": ("perceiver_audioset", (32, 224, 224, 3), 527, None),
    "audioset/audio_video.yaml": ("perceiver_audioset", {"audio": (61440,), "video": (32, 224, 224, 3)}, 527, None),
    "language/perceiver_io_mlm.yaml": ("perceiver_io_language", (2048,), 262, 201_108_230),
}


def _build_net_on_meta(net_cfg: dict[str, Any], input_shape: Any, num_classes: int) -> torch.nn.Module:
    from jsonargparse import ArgumentParser

    net_cfg = copy.deepcopy(net_cfg)
    net_cfg["init_args"]["num_classes"] = num_classes
    net_cfg["init_args"]["adapter"].setdefault("init_args", {})["input_shape"] = input_shape
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(torch.nn.Module, "net")
    parsed = parser.parse_object({"net": net_cfg})
    with torch.device("meta"):
        return parser.instantiate_classes(parsed).net


@pytest.mark.parametrize("name", sorted(PRESET_OF))
def test_paper_config_matches_preset(name: str):
    from perceiver_lit.models import build_preset

    preset, shape, classes, paper_params = PRESET_OF[name]
    cfg = yaml.safe_load((CONFIGS / name).read_text())
    net = _build_net_on_meta(cfg["model"]["init_args"]["net"], shape, classes)
    with torch.device("meta"):
        reference = (
            build_preset(preset, input_shape=shape)
            if classes == 262
            else build_preset(preset, input_shape=shape, num_classes=classes)
        )
    count = sum(p.numel() for p in net.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    if paper_params is not None:
        assert count == paper_params


def _import_path(path: str) -> Any:
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("preset", TRAINER_PRESETS, ids=lambda p: p.name)
def test_trainer_preset(preset: Path, shards, tmp_path: Path, capsys):
    trainer_cfg = (yaml.safe_load(preset.read_text()) or {}).get("trainer", {})
    runnable_here = (
        trainer_cfg.get("accelerator", "cpu") == "cpu"
        and trainer_cfg.get("devices", 1) in (1, "1")
        and trainer_cfg.get("num_nodes", 1) == 1
    )
    if not runnable_here:
        # Needs GPUs or several processes: parse only, and check the preset's values survive into the config.
        with pytest.raises(SystemExit) as exit_info:
            PerceiverCLI(args=["fit", "--config", str(BASE_FOR_PRESETS), "--config", str(preset), "--print_config"])
        assert exit_info.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
        checked = [key for key, value in trainer_cfg.items() if not isinstance(value, (dict, list))]
        assert {"accelerator", "precision"} <= set(checked), checked  # never an empty check
        for key in checked:
            assert printed[key] == trainer_cfg[key], key
        if isinstance(trainer_cfg.get("strategy"), dict):
            assert printed["strategy"]["class_path"] == trainer_cfg["strategy"]["class_path"]
            for key, value in trainer_cfg["strategy"].get("init_args", {}).items():
                got = printed["strategy"]["init_args"][key]
                if key == "auto_wrap_policy":  # class paths: jsonargparse prints a re-export's shorter path; a set
                    got, value = {_import_path(v) for v in got}, {_import_path(v) for v in value}
                assert got == value, key
        return
    smoke = smoke_overrides(BASE_FOR_PRESETS, shards, tmp_path)
    smoke["trainer"] = {k: v for k, v in smoke["trainer"].items() if k not in trainer_cfg}
    override = write_config(tmp_path, smoke, "smoke.yaml")
    cli = PerceiverCLI(args=["fit", "--config", str(BASE_FOR_PRESETS), "--config", str(preset), "--config", override])
    assert cli.trainer.global_step == 2
    assert cli.trainer.precision == trainer_cfg["precision"]


@pytest.mark.parametrize("spec", SWEEPS or [None], ids=lambda p: p.name if p else "none")
def test_sweep_spec_loads(spec: Path | None):
    if spec is None:
        pytest.skip("no sweep specs in configs/sweeps yet")
    loaded = yaml.safe_load(spec.read_text())
    assert isinstance(loaded, dict) and loaded, f"{spec}: expected a YAML mapping"
