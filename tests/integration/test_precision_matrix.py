"""Every optimizer x precision x clipping combination a shipped recipe uses, through `perceiver-lit fit`, under every
trainer preset that runs on CPU (issue 19's test matrix; the bf16 presets crashed at the first step and no test saw it).

Combinations: 3 tasks, each from the shipped recipe that uses it (classification: configs/quickstart.yaml, AdamW;
multi-label: configs/local/audio.yaml, LAMB; MLM: configs/local/text_mlm.yaml, LAMB), each with AdamW and LAMB, with
and without gradient clipping (every recipe clips; without: what a user gets with `--trainer.gradient_clip_val
null`): 12 combinations, each a real `perceiver-lit fit` of STEPS optimizer steps, under
- configs/trainer/cpu.yaml (the fp32 default) and configs/trainer/cpu_bf16.yaml (bf16-mixed);
- configs/trainer/ddp.yaml on 2 gloo ranks (bf16-mixed, static_graph, gradient_as_bucket_view, as shipped);
- configs/trainer/fsdp.yaml, FSDP2 on 2 gloo ranks (bf16 MixedPrecisionPolicy + bf16 autocast, as shipped).
gpu.yaml differs from cpu_bf16.yaml only in its accelerator and logging knobs (asserted below), so its combinations
are the cpu_bf16 runs on another device; ddp.yaml and fsdp.yaml run here as shipped except accelerator/devices.

Cost: one worker process per preset group runs its 12 (or 24) fits in turn through the console script's `main`, so
Python, torch and Lightning load once; the DDP and FSDP2 groups start their 2 ranks as a cluster launcher (srun,
torchrun) would, with LOCAL_RANK / WORLD_SIZE set, so each fit reuses them. Models are tiny, shards are the shared
session fixtures. The same file is the worker:
    python tests/integration/test_precision_matrix.py --presets cpu cpu_bf16 --shards shards.json --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve()
TRAINER = ROOT / "configs" / "trainer"
STEPS = 3
CLIP = 0.01  # far below the tiny models' gradient norms at init, so clipping must act on every step
OPTIMIZERS = ("adamw", "lamb")
CLIPS = (None, CLIP)

# task: (the shipped recipe, a tiny-model + tiny-data overlay; the urls come from the fixtures)
RECIPES = {
    "classification": (
        "configs/quickstart.yaml",
        {
            "net": {
                "init_args": {
                    "adapter": {"init_args": {"num_frequency_bands": 2}},
                    "num_latents": 4,
                    "latent_dim": 16,
                    "num_self_attends_per_block": 1,
                }
            },
            "data": {"batch_size": 4, "shuffle_buffer": 8},
        },
    ),
    "multilabel": (
        "configs/local/audio.yaml",
        {
            "net": {
                "init_args": {
                    "adapter": {"init_args": {"num_frequency_bands": 2}},
                    "num_latents": 4,
                    "latent_dim": 16,
                    "num_self_attends_per_block": 1,
                }
            },
            "data": {"batch_size": 2, "clip_samples": 1600},  # 10 patches of 160 samples
        },
    ),
    "mlm": (
        "configs/local/text_mlm.yaml",
        {
            "net": {
                "init_args": {
                    "adapter": {"init_args": {"num_channels": 16}},
                    "queries": {"init_args": {"num_queries": 32, "num_channels": 16}},
                    "num_latents": 4,
                    "latent_dim": 16,
                    "num_self_attends_per_block": 1,
                }
            },
            "data": {"batch_size": 2, "max_length": 32},
        },
    ),
}
PRESET_PRECISION = {"cpu": "32-true", "cpu_bf16": "bf16-mixed", "ddp": "bf16-mixed", "fsdp": "bf16-mixed"}
PRESET_STRATEGY = {
    "cpu": "SingleDeviceStrategy",
    "cpu_bf16": "SingleDeviceStrategy",
    "ddp": "DDPStrategy",
    "fsdp": "FSDP2Strategy",
}


# --- the probe: a callback that records what each step did -------------------------------------------------------


def _full(t):
    """A whole tensor on CPU in fp32 (FSDP2's DTensor shards are gathered: every rank must call this)."""
    from torch.distributed.tensor import DTensor

    t = t.detach()
    return (t.full_tensor() if isinstance(t, DTensor) else t).float().cpu().clone()  # a copy, not a view


def _grad_norm(module) -> float:
    """The global L2 norm of the gradients, over all shards (what clipping bounds)."""
    import torch

    grads = [_full(p.grad) for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


try:
    import lightning.pytorch as _pl

    class Probe(_pl.Callback):
        """Records, into `<default_root_dir>/probe.json` on rank 0: the loss of each step, the gradient norm before
        clipping (Lightning clips right after `on_before_optimizer_step`) and after it (the step leaves the gradients
        in place until the next step's zero_grad), the largest weight change, and what the trainer was built with."""

        def on_train_start(self, trainer, pl_module) -> None:
            self.initial = {n: _full(p) for n, p in pl_module.net.named_parameters()}
            self.losses, self.pre, self.post = [], [], []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.pre.append(_grad_norm(pl_module.net))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(float(outputs["loss"]))
            self.post.append(_grad_norm(pl_module.net))

        def on_train_end(self, trainer, pl_module) -> None:
            final = {n: _full(p) for n, p in pl_module.net.named_parameters()}
            changes = [float((final[n] - self.initial[n]).abs().max()) for n in final]
            optimizer = trainer.optimizers[0]
            grad_norm = trainer.callback_metrics.get("train/grad_norm")
            record = {
                "global_step": trainer.global_step,
                "losses": self.losses,
                "pre": self.pre,
                "post": self.post,
                "max_change": max(changes),
                "changed": sum(c > 0 for c in changes),
                "tensors": len(changes),
                "precision": str(trainer.precision),
                "plugin": type(trainer.precision_plugin).__name__,
                "strategy": type(trainer.strategy).__name__,
                "world_size": trainer.world_size,
                "clip": trainer.gradient_clip_val,
                "optimizer": type(optimizer).__name__,
                "fused": bool(optimizer.defaults.get("fused")),
                "logged_grad_norm": None if grad_norm is None else float(grad_norm),
                "static_graph": getattr(trainer.strategy, "_ddp_kwargs", {}).get("static_graph"),
                "gradient_as_bucket_view": getattr(trainer.strategy, "_ddp_kwargs", {}).get("gradient_as_bucket_view"),
                "param_dtype": getattr(getattr(trainer.strategy, "shard_options", None), "param_dtype", None),
            }
            if trainer.is_global_zero:
                Path(trainer.default_root_dir, "probe.json").write_text(json.dumps(record))
except ImportError:  # pragma: no cover - collected without Lightning
    pass


# --- the worker -------------------------------------------------------------------------------------------------


def _overlay(task: str, shards: dict, run: Path) -> dict:
    _, tiny = RECIPES[task]
    train = shards[task][0]
    return {
        "seed_everything": 0,
        "trainer": {
            "max_steps": STEPS,
            "max_epochs": 1000,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,  # no validation: the matrix is about the optimizer step
            "enable_progress_bar": False,
            "enable_model_summary": False,
            # CSV instead of the default W&B run: W&B's service costs seconds per fit; CSV keeps the logger-only
            # callbacks (GradNorm, LearningRateMonitor) that read the gradients and the lr around each step.
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run), "name": "csv"},
            },
            # Replaces the recipe's callbacks (quickstart's UnmaskedTuning only changes input_keep late in training).
            "callbacks": [{"class_path": "tests.integration.test_precision_matrix.Probe"}],
        },
        "model": {"init_args": {"net": tiny["net"]}},
        # val_urls: the train shards (never read: no validation); the eval split of the synthetic shards is one
        # shard, and exact evaluation needs one per rank.
        "data": {
            "init_args": {
                "train_urls": train,
                "val_urls": train,
                "test_urls": None,
                "num_workers": 0,  # in-process loading: workers are covered by test_configs.py
                **tiny["data"],
            }
        },
    }


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", nargs="+", required=True, help="configs/trainer/<name>.yaml to run")
    p.add_argument("--shards", type=Path, required=True, help="JSON {task: [train_urls, val_urls]}")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--devices", type=int, default=0, help="> 0: override accelerator to cpu and devices to this")
    args = p.parse_args(argv)

    import torch
    import yaml

    from perceiver_lit.cli import main
    from perceiver_lit.distributed import destroy_process_group

    torch.set_num_threads(1)
    sys.argv = sys.argv[:1]  # the CLI reads its arguments from `main(cmd)`, not from this worker's command line
    shards = json.loads(args.shards.read_text())
    base_port = int(os.environ.get("MASTER_PORT", "0"))
    fits = 0
    for preset in args.presets:
        for task in RECIPES:
            for optimizer in OPTIMIZERS:
                for clip in CLIPS:
                    run = args.out / f"{preset}-{task}-{optimizer}-{'clip' if clip else 'noclip'}"
                    run.mkdir(parents=True, exist_ok=True)
                    overlay = run / "overlay.yaml"
                    overlay.write_text(yaml.safe_dump(_overlay(task, shards, run), sort_keys=False))
                    cmd = [
                        "fit",
                        "--config",
                        str(ROOT / RECIPES[task][0]),
                        "--config",
                        str(TRAINER / f"{preset}.yaml"),
                        "--config",
                        str(overlay),
                        "--model.init_args.optimizer",
                        optimizer,
                        "--trainer.gradient_clip_val",
                        str(clip) if clip else "null",
                        "--trainer.default_root_dir",
                        str(run),
                    ]
                    if args.devices:
                        # ddp.yaml / fsdp.yaml say accelerator gpu: the same preset on CPU ranks (gloo), nothing else
                        # changed, is what this machine can run.
                        cmd += ["--trainer.accelerator", "cpu", "--trainer.devices", str(args.devices)]
                    if base_port:
                        # A new rendezvous port per fit (every rank counts the same): the last fit's TCPStore may
                        # still be listening on the old one until its objects are collected, and the new group's
                        # ranks would meet there and wait forever (seen under FSDP2).
                        os.environ["MASTER_PORT"] = str(base_port + fits)
                        fits += 1
                    t0 = time.monotonic()
                    try:
                        main(cmd)
                    except Exception:  # noqa: BLE001 - recorded per combination; the test names each failure
                        destroy_process_group(barrier=False)
                        (run / "error.txt").write_text(traceback.format_exc()[-3000:])
                    print(f"[matrix] {run.name}: {time.monotonic() - t0:.1f} s", flush=True)


# --- launching the workers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards_file(tmp_path_factory, fashion_shards, synthetic_shards) -> Path:
    path = tmp_path_factory.mktemp("matrix") / "shards.json"
    path.write_text(
        json.dumps(
            {
                "classification": [fashion_shards.train_urls, fashion_shards.test_urls],
                "multilabel": list(synthetic_shards("audio")),
                "mlm": list(synthetic_shards("text")),
            }
        )
    )
    return path


def run_matrix(presets: list[str], shards: Path, out: Path, ranks: int = 1, timeout: float = 900) -> None:
    """Run the worker for `presets`: one process, or `ranks` processes launched as a cluster launcher does."""
    from tests.integration.test_ddp import free_port, run_worker_group

    args = ["--presets", *presets, "--shards", str(shards), "--out", str(out)]
    if ranks == 1:
        run_worker_group([args], [{"PYTHONPATH": str(ROOT)}], timeout=timeout, worker=WORKER)
        return
    port = str(free_port())
    envs = [
        {
            "PYTHONPATH": str(ROOT),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "NODE_RANK": "0",
            "LOCAL_RANK": str(r),
            "WORLD_SIZE": str(ranks),
        }
        for r in range(ranks)
    ]
    run_worker_group([[*args, "--devices", str(ranks)]] * ranks, envs, timeout=timeout, worker=WORKER)


def check(out: Path, preset: str, world_size: int = 1) -> None:
    """Assert every combination of `preset` trained as configured; one message lists every failure."""
    failures = []
    for task in RECIPES:
        for optimizer in OPTIMIZERS:
            for clip in CLIPS:
                name = f"{preset}-{task}-{optimizer}-{'clip' if clip else 'noclip'}"
                run = out / name
                if (run / "error.txt").exists():
                    failures.append(f"{name}: fit failed:\n{(run / 'error.txt').read_text()[-1500:]}")
                    continue
                if not (run / "probe.json").exists():
                    failures.append(f"{name}: no probe record (the fit did not reach the end of training)")
                    continue
                r = json.loads((run / "probe.json").read_text())
                problems = _problems(r, preset, optimizer, clip, world_size)
                if problems:
                    failures.append(f"{name}: " + "; ".join(problems) + f"\n  {r}")
    assert not failures, f"{len(failures)} of 12 combinations under {preset}.yaml failed:\n" + "\n".join(failures)


def _problems(r: dict, preset: str, optimizer: str, clip: float | None, world_size: int) -> list[str]:
    out = []
    if r["global_step"] != STEPS or len(r["losses"]) != STEPS:
        out.append(f"{r['global_step']} steps, {len(r['losses'])} losses, expected {STEPS}")
    if not all(math.isfinite(x) for x in r["losses"] + r["pre"] + r["post"]):
        out.append("a loss or gradient norm is not finite")
    if not r["max_change"] > 1e-5 or r["changed"] < r["tensors"] // 2:
        out.append(f"weights barely moved: {r['changed']} of {r['tensors']} tensors, max change {r['max_change']:.2e}")
    if (r["precision"], r["strategy"], r["world_size"]) != (
        PRESET_PRECISION[preset],
        PRESET_STRATEGY[preset],
        world_size,
    ):
        out.append(f"built with {r['precision']} / {r['strategy']} / {r['world_size']} ranks")
    if r["optimizer"] != {"adamw": "AdamW", "lamb": "Lamb"}[optimizer]:
        out.append(f"optimizer {r['optimizer']}")
    # Fused AdamW: plain tensors (not FSDP2's DTensors), and not where Lightning's AMP plugin would refuse clipping.
    fused = optimizer == "adamw" and preset != "fsdp" and not (clip and r["plugin"] == "MixedPrecision")
    if r["fused"] != fused:
        out.append(f"fused={r['fused']}, expected {fused} under {r['plugin']} with clip {clip}")
    for step, (pre, post) in enumerate(zip(r["pre"], r["post"])):
        if clip is None and not math.isclose(post, pre, rel_tol=1e-6):
            out.append(f"step {step}: gradients changed without clipping ({pre:.4g} -> {post:.4g})")
        if clip is not None and not (pre > clip and math.isclose(post, clip, rel_tol=1e-3)):
            out.append(f"step {step}: clipping to {clip} gave a gradient norm {pre:.4g} -> {post:.4g}")
    # GradNorm (train/grad_norm) logs the norm before clipping: the same number the probe measured last.
    if r["logged_grad_norm"] is None or not math.isclose(r["logged_grad_norm"], r["pre"][-1], rel_tol=1e-4):
        out.append(f"train/grad_norm {r['logged_grad_norm']} is not the gradient norm {r['pre'][-1]:.6g}")
    return out


@pytest.fixture(scope="module")
def single_device_runs(shards_file: Path, tmp_path_factory) -> Path:
    """cpu.yaml and cpu_bf16.yaml: 24 fits in one process."""
    out = tmp_path_factory.mktemp("single")
    run_matrix(["cpu", "cpu_bf16"], shards_file, out)
    return out


@pytest.fixture(scope="module")
def two_rank_runs(shards_file: Path, tmp_path_factory) -> Path:
    """ddp.yaml and fsdp.yaml on the same 2 gloo ranks: 24 fits in two processes."""
    out = tmp_path_factory.mktemp("two_ranks")
    run_matrix(["ddp", "fsdp"], shards_file, out, ranks=2)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("preset", ["cpu", "cpu_bf16"])
def test_single_device_presets(single_device_runs: Path, preset: str) -> None:
    check(single_device_runs, preset)


@pytest.mark.integration
@pytest.mark.ddp
def test_ddp_preset_on_two_gloo_ranks(two_rank_runs: Path) -> None:
    check(two_rank_runs, "ddp", world_size=2)
    r = json.loads(next(two_rank_runs.glob("ddp-*/probe.json")).read_text())
    assert (r["static_graph"], r["gradient_as_bucket_view"]) == (True, True), r  # ddp.yaml's settings were used


@pytest.mark.integration
@pytest.mark.ddp
def test_fsdp2_preset_on_two_gloo_ranks(two_rank_runs: Path) -> None:
    check(two_rank_runs, "fsdp", world_size=2)
    r = json.loads(next(two_rank_runs.glob("fsdp-*/probe.json")).read_text())
    assert r["param_dtype"] == "bfloat16", r  # fsdp.yaml's MixedPrecisionPolicy was used


def test_gpu_presets_differ_from_the_tested_ones_only_in_their_device() -> None:
    """gpu.yaml is cpu_bf16.yaml on a GPU; ddp.yaml and fsdp.yaml run above with only accelerator / devices
    overridden. Anything else that differs (precision, strategy, clipping, accumulation) would need its own runs."""
    import yaml

    def trainer(name: str) -> dict:
        return yaml.safe_load((TRAINER / f"{name}.yaml").read_text())["trainer"]

    device_only = {"accelerator", "devices", "num_nodes", "log_every_n_steps", "benchmark"}
    gpu, cpu_bf16 = trainer("gpu"), trainer("cpu_bf16")
    assert {k: v for k, v in gpu.items() if k not in device_only} == {
        k: v for k, v in cpu_bf16.items() if k not in device_only
    }
    assert gpu["accelerator"] == "gpu" and gpu["benchmark"] is False  # cudnn autotuning: no effect on the step
    for name in ("ddp", "fsdp"):
        assert trainer(name)["accelerator"] == "gpu" and trainer(name)["precision"] == PRESET_PRECISION[name]


if __name__ == "__main__":
    worker(sys.argv[1:])
