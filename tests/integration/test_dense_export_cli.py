"""HF export of the dense Perceiver IO models through the CLI, as a user runs it: `perceiver-lit fit` on the shipped
recipe (configs/local/flow.yaml, configs/local/multimodal_autoencoding.yaml) at tiny sizes with the settings HF's
class fixes, on shards from `perceiver-lit-shards synthetic`; `perceiver-lit-export --ckpt ... --format hf` in its
own process; `PerceiverFor....from_pretrained(out)` gives the checkpoint's net's outputs (fp32, max abs diff 1e-4).
A flow net trained with a matching cost (correlation_radius > 0) is refused: exit 2, one line naming the option.
tests/unit/test_hf_export.py checks the same maps on nets built in Python."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.fixtures.training import run_cli, write_config
from tests.integration.test_multimodal_autoencoding import FRAMES, SAMPLES, data_overrides
from tests.integration.test_multimodal_autoencoding import SIZE as AE_SIZE

pytestmark = pytest.mark.integration
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
FLOW = ROOT / "configs" / "local" / "flow.yaml"
AE = ROOT / "configs" / "local" / "multimodal_autoencoding.yaml"
FLOW_SIZE = 16  # the synthetic_shards fixture's flow pairs
SAMPLES_PER_PATCH = 128  # the recipe's: 100 audio patches per clip


def trainer(run: Path) -> dict:
    """Two training steps, no validation and no logger: only the checkpoint matters here."""
    return {
        "max_steps": 2,
        "max_epochs": 1,
        "max_time": None,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": str(run),
    }


def fit(recipe: Path, overrides: dict, tmp_path: Path, name: str) -> Path:
    """`perceiver-lit fit --config recipe --config overrides` (in this process); the run's last.ckpt."""
    run = tmp_path / name
    cfg = write_config(tmp_path, {"trainer": trainer(run), **overrides}, f"{name}.yaml")
    cli = run_cli(["fit", "--config", str(recipe), "--config", cfg], cwd=tmp_path)
    assert cli.trainer.global_step == 2
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


def export(ckpt: Path, out: Path) -> subprocess.CompletedProcess:
    """`perceiver-lit-export --ckpt ckpt --format hf --out out` in its own process, as a user types it."""
    cmd = [str(Path(sys.executable).parent / "perceiver-lit-export"), "--ckpt", str(ckpt), "--format", "hf"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*cmd, "--out", str(out)], cwd=ckpt.parent, env=env, capture_output=True, text=True, timeout=300
    )


def flow_net(correlation_radius: int = 0) -> dict:
    """The flow recipe's net at tiny widths, with what HF's PerceiverForOpticalFlow fixes: 3x3 patches -> 64
    channels, 64 Fourier bands, one decoder head of widening 1, no query residual, output / 100."""
    net = copy.deepcopy(yaml.safe_load(FLOW.read_text())["model"]["init_args"]["net"])
    net["init_args"].update(
        num_latents=8,
        latent_dim=16,
        num_self_attends=1,
        num_self_attention_heads=2,
        decoder_widening_factor=1,
        decoder_query_residual=False,
        rescale_factor=100.0,
    )
    adapter = net["init_args"]["adapter"]["init_args"]
    adapter.update(num_channels=64, num_frequency_bands=64, correlation_radius=correlation_radius)
    return net


def flow_overrides(shards: tuple[str, str], correlation_radius: int = 0) -> dict:
    return {
        "model": {"init_args": {"net": flow_net(correlation_radius)}},
        "data": {
            "init_args": {
                "train_urls": shards[0],
                "val_urls": shards[1],
                "test_urls": shards[1],
                "crop_size": FLOW_SIZE,
                "batch_size": 4,
                "samples_per_epoch": 8,
                "shuffle_buffer": 4,
                "num_workers": 0,
            }
        },
    }


def test_a_flow_checkpoint_exports_to_hf_and_hf_gives_its_flow(synthetic_shards, tmp_path):
    from perceiver_lit.models import extract_patches, pretrained

    ckpt = fit(FLOW, flow_overrides(synthetic_shards("flow")), tmp_path, "flow")
    proc = export(ckpt, tmp_path / "hf")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert f"-> {tmp_path / 'hf'}" in proc.stdout

    hf = transformers.PerceiverForOpticalFlow.from_pretrained(tmp_path / "hf").eval()
    assert list(hf.config.train_size) == [FLOW_SIZE, FLOW_SIZE]
    net = pretrained(str(ckpt)).eval()  # the checkpoint's net, read back on its own
    frames = torch.randn(2, 2, FLOW_SIZE, FLOW_SIZE, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = net(frames), hf(inputs=extract_patches(frames)).logits
    assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == (2, FLOW_SIZE, FLOW_SIZE, 2)
    assert theirs.abs().max() > 1e-3  # the decoder's output / 100: not a trivially small flow
    assert (theirs - ours).abs().max() <= 1e-4


def test_a_flow_checkpoint_with_a_matching_cost_is_refused_in_one_line(synthetic_shards, tmp_path):
    ckpt = fit(FLOW, flow_overrides(synthetic_shards("flow"), correlation_radius=1), tmp_path, "corr")
    proc = export(ckpt, tmp_path / "hf")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("perceiver-lit-export: error: save_huggingface: PerceiverIOFlow")
    assert "correlation_radius 0), not radius 1" in lines[0]
    assert not (tmp_path / "hf").exists()


def ae_overrides(shards: tuple[str, str]) -> dict:
    """The autoencoding recipe's net at tiny widths, with what HF's PerceiverForMultimodalAutoencoding fixes:
    1x4x4 video patches and video queries with 32 Fourier bands, audio patches and queries with 192, the inputs'
    top frequency set by the pixel / sample grid (HF's max_resolution; ours defaults to the patch grid)."""
    net = copy.deepcopy(yaml.safe_load(AE.read_text())["model"]["init_args"]["net"])
    net["init_args"].update(
        num_latents=8,
        latent_dim=16,
        num_self_attends=1,
        num_self_attention_heads=2,
        decoder_output_channels=16,
        label_query_channels=16,
        video_query_bands=32,
        audio_query_bands=192,
    )
    adapters = net["init_args"]["adapter"]["init_args"]["adapters"]
    adapters["video"].update(patch_size=[1, 4, 4], num_frequency_bands=32, max_resolution=[FRAMES, AE_SIZE, AE_SIZE])
    adapters["audio"].update(samples_per_patch=SAMPLES_PER_PATCH, num_frequency_bands=192, max_resolution=[SAMPLES])
    return {
        "model": {"init_args": {"net": net, "train_video_queries": 64, "train_audio_queries": 8}},
        "data": data_overrides(shards),
    }


def test_a_multimodal_autoencoding_checkpoint_exports_to_hf_and_hf_gives_its_outputs(synthetic_shards, tmp_path):
    from perceiver_lit.models import pretrained

    ckpt = fit(AE, ae_overrides(synthetic_shards("audiovisual")), tmp_path, "ae")
    proc = export(ckpt, tmp_path / "hf")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    hf = transformers.PerceiverForMultimodalAutoencoding.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.num_labels == 10 and hf.config.num_frames == FRAMES and hf.config.image_size == AE_SIZE
    net = pretrained(str(ckpt)).eval()
    g = torch.Generator().manual_seed(0)
    x = {
        "video": torch.rand(2, FRAMES, AE_SIZE, AE_SIZE, 3, generator=g),  # pixels in [0, 1], as the recipe's data
        "audio": torch.rand(2, SAMPLES, generator=g) * 2 - 1,
        "label": torch.nn.functional.one_hot(torch.tensor([3, 7]), 10).float(),
    }
    hf_inputs = {"image": x["video"].permute(0, 1, 4, 2, 3), "audio": x["audio"][..., None], "label": x["label"]}
    pixels, patches = FRAMES * AE_SIZE * AE_SIZE, SAMPLES // SAMPLES_PER_PATCH
    with torch.no_grad():
        # HF masks the label input always: the task's eval (label masked); HF decodes only the points it is given
        ours = net(x, masked=("label",))
        theirs = hf(
            inputs=hf_inputs,
            subsampled_output_points={"image": torch.arange(pixels), "audio": torch.arange(patches)},
        ).logits
    pairs = {
        "video": (ours["video"].reshape(2, pixels, 3), theirs["image"]),
        "audio": (ours["audio"], theirs["audio"].reshape(2, SAMPLES)),
        "label": (ours["label"], theirs["label"]),
    }
    for name, (a, b) in pairs.items():
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape, name
        assert b.abs().max() > 1e-3, name
        assert (a - b).abs().max() <= 1e-4, name
