"""Every config in configs/ is smoke-tested: parsed, then trained for two steps on tiny real data.

Configs are found by glob, so configs added later are picked up. How a config is shrunk:
- data: chosen by the config's data class (not its directory): Fashion-MNIST / JPEG shards for images, the
  synthetic shards of `perceiver-lit-shards synthetic` for audio, video, audio+video, point clouds and text; the
  per-modality sizes in DATA_OVERRIDES make the inputs tiny;
- model: `shrink()` walks the net's init_args and makes every width, depth and head count tiny, keeping the
  structure (adapter, sharing, queries, output head) the config chose;
- trainer: two steps on CPU in fp32, one validation batch.
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

from perceiver_lit.cli import PerceiverCLI
from tests.fixtures.training import write_config

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL = sorted(p for p in CONFIGS.rglob("*.yaml"))
TRAINER_PRESETS = [p for p in ALL if p.parent.name == "trainer"]
SWEEPS = [p for p in ALL if "sweeps" in p.relative_to(CONFIGS).parts]
RUNNABLE = [p for p in ALL if p not in TRAINER_PRESETS and p not in SWEEPS]
BASE_FOR_PRESETS = CONFIGS / "local" / "image.yaml"

TRAINER = {
    "accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "32-true",
    "max_steps": 2, "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "limit_test_batches": 1,
    "num_sanity_val_steps": 0, "val_check_interval": 1.0, "log_every_n_steps": 1, "logger": False,
    "enable_progress_bar": False, "enable_model_summary": False,
}
DATA_COMMON = {"batch_size": 2, "num_workers": 0, "samples_per_epoch": 4, "shuffle_buffer": 4, "mix_batches": 1}

# data class name -> (shards to use, tiny sizes). "fashion"/"jpeg" are the data fixtures; others are modalities
# of the synthetic writer.
DATA_OVERRIDES: dict[str, tuple[str, dict[str, Any]]] = {
    "FashionMNISTDataModule": ("fashion", {}),
    "ImageDataModule": ("jpeg", {"image_size": 32}),
    "AudioDataModule": ("audio", {"sample_rate": 16000, "clip_samples": 1280, "num_classes": 10,
                                  "multilabel": True, "features": "raw"}),
    "VideoDataModule": ("video", {"num_frames": 4, "frame_stride": 1, "crop_size": 16, "short_side": None,
                                  "num_classes": 10}),
    "AudioVisualDataModule": ("audiovisual", {"num_frames": 4, "frame_stride": 1, "fps": 10.0, "crop_size": 16,
                                              "short_side": None, "sample_rate": 16000, "clip_samples": None,
                                              "num_classes": 10, "features": "raw"}),
    "PointCloudDataModule": ("pointcloud", {"num_points": 64, "num_classes": 5}),
    "TextDataModule": ("text", {"max_length": 64}),
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
    if data_class == "TextDataModule" and cfg["data"].get("init_args", {}).get("num_classes") is not None:
        data_args["num_classes"] = len(json.loads((Path(train_urls.split("::")[0]).parent / "classes.json").read_text()))
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


@pytest.mark.parametrize("config", RUNNABLE, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_trains_two_steps(config: Path, shards, tmp_path: Path):
    override = write_config(tmp_path, smoke_overrides(config, shards, tmp_path), "smoke.yaml")
    cli = PerceiverCLI(args=["fit", "--config", str(config), "--config", override])
    assert cli.trainer.global_step == 2
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
        reference = build_preset(preset, input_shape=shape) if classes == 262 else build_preset(
            preset, input_shape=shape, num_classes=classes)
    count = sum(p.numel() for p in net.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    if paper_params is not None:
        assert count == paper_params


@pytest.mark.parametrize("preset", TRAINER_PRESETS, ids=lambda p: p.name)
def test_trainer_preset(preset: Path, shards, tmp_path: Path, capsys):
    trainer_cfg = (yaml.safe_load(preset.read_text()) or {}).get("trainer", {})
    runnable_here = trainer_cfg.get("accelerator", "cpu") == "cpu" and trainer_cfg.get("devices", 1) in (1, "1") \
        and trainer_cfg.get("num_nodes", 1) == 1
    if not runnable_here:
        # Needs GPUs or several processes: parse only, and check the preset's values survive into the config.
        with pytest.raises(SystemExit) as exit_info:
            PerceiverCLI(args=["fit", "--config", str(BASE_FOR_PRESETS), "--config", str(preset), "--print_config"])
        assert exit_info.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
        for key, value in trainer_cfg.items():
            if not isinstance(value, (dict, list)):
                assert printed[key] == value, key
        return
    smoke = smoke_overrides(BASE_FOR_PRESETS, shards, tmp_path)
    smoke["trainer"] = {k: v for k, v in smoke["trainer"].items() if k not in trainer_cfg}
    override = write_config(tmp_path, smoke, "smoke.yaml")
    cli = PerceiverCLI(args=["fit", "--config", str(BASE_FOR_PRESETS), "--config", str(preset), "--config", override])
    assert cli.trainer.global_step == 2


@pytest.mark.parametrize("spec", SWEEPS or [None], ids=lambda p: p.name if p else "none")
def test_sweep_spec_loads(spec: Path | None):
    if spec is None:
        pytest.skip("no sweep specs in configs/sweeps yet")
    loaded = yaml.safe_load(spec.read_text())
    assert isinstance(loaded, dict) and loaded, f"{spec}: expected a YAML mapping"
