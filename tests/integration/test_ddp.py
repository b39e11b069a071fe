"""DDP on CPU with gloo, real processes: 2 ranks x batch B reach the same weights as 1 rank x batch 2B.

Equal weights after n AdamW steps prove both the gradient all-reduce (a mean over ranks) and the data split
(rank r gets samples r, r + 2, ...: together exactly the single run's batch). The same file is the worker: run as a
script it trains a tiny Perceiver with the real Classification task and writes the final weights
(`python tests/integration/test_ddp.py --strategy ddp --devices 2 --out W.pt`).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve()
ROOT = WORKER.parents[2]
STEPS, BATCH, NUM_CLASSES, SHAPE, LR = 3, 4, 4, (8, 8, 1), 1e-2
U_BF16 = 2.0**-8  # bf16's unit roundoff: 8 significant bits, round to nearest


# --- the worker --------------------------------------------------------------------------------------------------


def _tiny_task(activation_checkpointing: bool = False, optimizer: str = "adamw"):
    from perceiver_lit.models import ImageAdapter, Perceiver
    from perceiver_lit.tasks import Classification

    # 2 cross-attends sharing nothing, 3 blocks sharing one latent block: a shared module runs 3 times per forward.
    net = Perceiver(
        ImageAdapter(SHAPE, num_frequency_bands=4),
        num_classes=NUM_CLASSES,
        num_latents=8,
        latent_dim=16,
        num_cross_attends=2,
        num_blocks=3,
        num_self_attends_per_block=2,
        num_self_attention_heads=2,
        activation_checkpointing=activation_checkpointing,
    )
    # eps 1e-3, not 1e-8: the attention key biases have an exactly-zero gradient (softmax ignores a per-query
    # constant), so theirs is float noise, which Adam with a tiny eps would blow up to lr-sized, rank-dependent steps.
    return Classification(
        net, num_classes=NUM_CLASSES, optimizer=optimizer, lr=LR, weight_decay=0.01, schedule="constant", eps=1e-3
    )


def _data(batch_size: int, num_samples: int):
    """Fixed random samples; rank r of W takes every W-th of one shuffled order (DistributedSampler), so the
    W per-rank batches of a step are, together, exactly the single run's batch of W x B."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    g = torch.Generator().manual_seed(1234)
    inputs = torch.randn(num_samples, *SHAPE, generator=g)
    target = torch.randint(0, NUM_CLASSES, (num_samples,), generator=g)
    samples = [{"inputs": inputs[i], "target": target[i]} for i in range(num_samples)]

    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            sampler = DistributedSampler(
                samples, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=True, seed=0
            )
            return DataLoader(samples, batch_size=batch_size, sampler=sampler)

    return Data()


def shipped_strategy(name: str):
    """(strategy, precision) as configs/trainer/<name>.yaml builds them; "single": ("auto", bf16-mixed), the
    precision every shipped GPU preset uses."""
    import importlib

    import yaml

    if name == "single":
        return "auto", "bf16-mixed"
    trainer = yaml.safe_load((ROOT / "configs" / "trainer" / f"{name}.yaml").read_text())["trainer"]
    spec = trainer["strategy"]
    module, cls = spec["class_path"].rsplit(".", 1)
    init = {k: v for k, v in (spec.get("init_args") or {}).items() if v is not None}
    return getattr(importlib.import_module(module), cls)(**init), trainer["precision"]


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp"], required=True)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sharded-ckpt", type=Path, help="fsdp: also save a sharded checkpoint here")
    p.add_argument("--optimizer", choices=["adamw", "lamb"], default="adamw")
    p.add_argument(
        "--shipped",
        action="store_true",
        help="precision and strategy settings from configs/trainer/{ddp,fsdp}.yaml (single: bf16-mixed)",
    )
    args = p.parse_args(argv)

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.strategies import DDPStrategy

    from perceiver_lit.distributed import DestroyProcessGroup, FSDP2Strategy

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    # Activation checkpointing changes no number, so the distributed runs use it and still must match the single
    # run: DDP the model's own switch on shared layers (what static_graph is for), FSDP2 the strategy's.
    task = _tiny_task(activation_checkpointing=args.strategy == "ddp", optimizer=args.optimizer)
    precision = "32-true"
    if args.shipped:
        # The presets' own precision and strategy arguments, as shipped (accelerator and devices set below).
        strategy, precision = shipped_strategy(args.strategy)
    else:
        strategy = {
            "single": "auto",
            "ddp": DDPStrategy(static_graph=True),
            # fp32 here so the comparison is exact up to float reordering; the config uses bf16 (--shipped).
            "fsdp": FSDP2Strategy(param_dtype=None, reduce_dtype=None, activation_checkpointing=True),
        }[args.strategy]
    world = args.devices * args.num_nodes
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=strategy,
        max_steps=args.steps,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        # FSDP still gathers its weights after fit: it destroys the group itself, below.
        callbacks=[] if args.strategy == "fsdp" else [DestroyProcessGroup()],
    )
    trainer.fit(task, datamodule=_data(args.batch, args.batch * world * args.steps))
    assert trainer.global_step == args.steps, trainer.global_step

    if args.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        from perceiver_lit.distributed import destroy_process_group

        # Units: the root + 2 cross-attention layers + the 2 layers of the ONE shared latent block (run 3 times).
        units = [m for m in task.net.modules() if isinstance(m, FSDPModule)]
        assert len(units) == 5, [type(m).__name__ for m in units]
        from torch.distributed._composable import checkpoint

        if not args.shipped:  # fsdp.yaml ships it off
            assert all(checkpoint.state(m) is not None for m in units if m is not task.net), "no activation ckpt"
        state = get_model_state_dict(task.net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if args.sharded_ckpt:
            trainer.save_checkpoint(args.sharded_ckpt)
        destroy_process_group()
    else:
        state = task.net.state_dict()
    if trainer.is_global_zero:
        torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, args.out)


# --- launching real processes --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args: str, env: dict[str, str] | None = None, worker: Path = WORKER) -> subprocess.Popen:
    """Start the worker (Lightning's launcher starts the other local ranks from the same command line)."""
    return subprocess.Popen(
        [sys.executable, str(worker), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_worker_group(
    arg_lists: list[list[str]], envs: list[dict[str, str]], timeout: float = 120, worker: Path = WORKER
) -> float:
    """Run worker processes (this file, or the script `worker`) to completion; fail with their output if one
    fails; assert none is left behind."""
    marker = uuid.uuid4().hex
    t0 = time.monotonic()
    procs = [
        launch(*a, env={**os.environ, **e, "PLIT_TEST_RUN": marker}, worker=worker) for a, e in zip(arg_lists, envs)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, f"worker failed ({p.returncode}):\n{out[-4000:]}"
    from tests.fixtures.slurm import processes_with_env

    deadline = time.monotonic() + 10
    while (left := processes_with_env("PLIT_TEST_RUN", marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left behind: {left}"
    return time.monotonic() - t0


_SINGLE: dict = {}


def single_process_weights(tmp_path: Path) -> dict:
    """Weights after STEPS steps of one process with batch 2 x BATCH (computed once per session)."""
    import torch

    if not _SINGLE:
        out = tmp_path / "single.pt"
        run_worker_group([["--strategy", "single", "--batch", str(2 * BATCH), "--out", str(out)]], [{}])
        _SINGLE.update(torch.load(out))
    return _SINGLE


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=1e-4), (
            f"{k}: max diff {(a[k].float() - b[k].float()).abs().max():.2e}"
        )


@pytest.mark.integration
@pytest.mark.ddp
def test_ddp_two_ranks_match_one_rank_with_double_batch(tmp_path: Path) -> None:
    import torch

    single = single_process_weights(tmp_path)
    out = tmp_path / "ddp.pt"
    run_worker_group(
        [["--strategy", "ddp", "--devices", "2", "--batch", str(BATCH), "--out", str(out)]],
        [{"MASTER_PORT": str(free_port())}],
    )
    assert_same_weights(torch.load(out), single)
    # Training moved the weights (otherwise equality would prove nothing).
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    initial = _tiny_task().net.state_dict()
    assert max((single[k] - v).abs().max() for k, v in initial.items()) > 1e-3


def assert_within_bf16_rounding(a: dict, b: dict, initial: dict) -> None:
    """Weights of two bf16-mixed runs that differ only in how the batch is split over ranks agree to bf16's rounding.

    Where the tolerance comes from: AdamW moves an element by at most about lr a step, so n steps move it at most
    n * lr (here 0.03). Under bf16 autocast every matmul output is rounded to 8 significant bits (relative error
    <= u = 2^-8), the weight-gradient matmuls included: one rank rounds the sum over its B samples, the single
    process the sum over 2B, then DDP / FSDP2 average in fp32. So the gradients reaching AdamW differ by O(u)
    relative, its normalised update direction by O(u), and the weights by O(n * lr * u) = 1.2e-4. Allowed: 2 n lr u
    as the RMS over all weights (measured 0.8 n lr u for DDP; bf16 against fp32 in this same setup differs by
    5 n lr u, and a rank's gradient left out of the mean by O(n lr)). Single elements can differ by more (a sum
    that cancels amplifies its rounding error), so per element only a quarter of the largest move is allowed.
    """
    import math

    assert a.keys() == b.keys()
    n = sum(v.numel() for v in a.values())
    rms = math.sqrt(sum(((a[k].float() - b[k].float()) ** 2).sum().item() for k in a) / n)
    worst = max(a, key=lambda k: (a[k].float() - b[k].float()).abs().max().item())
    worst_diff = (a[worst].float() - b[worst].float()).abs().max().item()
    assert rms <= 2 * STEPS * LR * U_BF16, f"RMS weight difference {rms:.2e} > 2 n lr u = {2 * STEPS * LR * U_BF16:.2e}"
    assert worst_diff <= STEPS * LR / 4, f"{worst}: max diff {worst_diff:.2e} > n lr / 4"
    moved = math.sqrt(sum(((b[k].float() - initial[k].float()) ** 2).sum().item() for k in b) / n)
    assert moved > 10 * rms, f"the weights moved {moved:.2e} RMS: too little for the comparison to mean anything"


def initial_weights() -> dict:
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    return _tiny_task().net.state_dict()


@pytest.mark.integration
@pytest.mark.ddp
def test_ddp_as_shipped_bf16_matches_one_rank_within_bf16_rounding(tmp_path: Path) -> None:
    """configs/trainer/ddp.yaml's precision and strategy (bf16-mixed, static_graph, gradient_as_bucket_view):
    2 ranks x batch B against one bf16-mixed process x batch 2B."""
    import torch

    single, ddp = tmp_path / "single_bf16.pt", tmp_path / "ddp_bf16.pt"
    run_worker_group(
        [
            ["--strategy", "single", "--batch", str(2 * BATCH), "--out", str(single), "--shipped"],
            ["--strategy", "ddp", "--devices", "2", "--batch", str(BATCH), "--out", str(ddp), "--shipped"],
        ],
        [{}, {"MASTER_PORT": str(free_port())}],
    )
    assert_within_bf16_rounding(torch.load(ddp), torch.load(single), initial_weights())


@pytest.mark.integration
@pytest.mark.ddp
def test_two_nodes_on_localhost(tmp_path: Path) -> None:
    """2 "nodes" x 1 process, started by hand as a cluster launcher would (NODE_RANK, MASTER_ADDR), complete and
    agree with the single-process run."""
    import torch

    port = str(free_port())
    out = tmp_path / "two_nodes.pt"
    args = ["--strategy", "ddp", "--num-nodes", "2", "--devices", "1", "--batch", str(BATCH), "--out", str(out)]
    envs = [
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "NODE_RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
        for r in range(2)
    ]
    run_worker_group([args, args], envs)
    assert_same_weights(torch.load(out), single_process_weights(tmp_path))


if __name__ == "__main__":
    worker(sys.argv[1:])
