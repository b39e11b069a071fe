"""OpticalFlow under DDP and FSDP2 on CPU with gloo, real processes: 2 ranks x batch B reach the same weights as one
process x batch 2B (every pixel decoded, so the ranks' gradients are exactly the halves of the single run's), and
with a random pixel subset per step both run and keep the ranks' weights equal. The same file is the worker:
`python tests/integration/test_flow_distributed.py --strategy ddp --devices 2 --batch 2 --out W.pt`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve()
STEPS, BATCH, SHAPE, LR = 3, 2, (2, 8, 8, 3), 1e-2


def _task(train_queries):
    from perceiver_lit.models import FlowPatchAdapter, PerceiverIOFlow
    from perceiver_lit.tasks import OpticalFlow

    net = PerceiverIOFlow(
        FlowPatchAdapter(SHAPE, num_channels=8, num_frequency_bands=3),
        num_latents=8,
        latent_dim=16,
        num_self_attends=2,
        num_self_attention_heads=2,
    )
    # eps 1e-3: see tests/integration/test_ddp.py (exactly-zero key-bias gradients)
    return OpticalFlow(
        net, train_queries=train_queries, lr=LR, weight_decay=0.01, schedule="constant", eps=1e-3, num_images=0
    )


def _data(batch_size: int, num_samples: int):
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    g = torch.Generator().manual_seed(1234)
    _, h, w, _ = SHAPE
    frames = torch.rand(num_samples, *SHAPE, generator=g) * 2 - 1
    flow = torch.randn(num_samples, h, w, 2, generator=g) * 3
    # every pixel valid: the loss is a mean over each rank's valid pixels, so with masks the 2-rank mean of means
    # would differ from the single run's mean by design (as in RAFT's training)
    valid = torch.ones(num_samples, h, w, dtype=torch.bool)
    samples = [{"inputs": frames[i], "target": flow[i], "valid": valid[i]} for i in range(num_samples)]

    class Data(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            sampler = DistributedSampler(
                samples, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=True, seed=0
            )
            return DataLoader(samples, batch_size=batch_size, sampler=sampler)

    return Data()


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp"], required=True)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--train-queries", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.strategies import DDPStrategy

    from perceiver_lit.distributed import DestroyProcessGroup, FSDP2Strategy

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    task = _task(args.train_queries)
    strategy = {
        "single": "auto",
        "ddp": DDPStrategy(static_graph=True),
        "fsdp": FSDP2Strategy(param_dtype=None, reduce_dtype=None),
    }[args.strategy]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=strategy,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[] if args.strategy == "fsdp" else [DestroyProcessGroup()],
    )
    trainer.fit(task, datamodule=_data(args.batch, args.batch * args.devices * STEPS))
    assert trainer.global_step == STEPS, trainer.global_step
    if args.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from perceiver_lit.distributed import destroy_process_group

        state = get_model_state_dict(task.net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        destroy_process_group()
    else:
        state = task.net.state_dict()
    if trainer.is_global_zero:
        torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, args.out)


@pytest.mark.integration
@pytest.mark.ddp
def test_flow_under_ddp_and_fsdp2_matches_one_process(tmp_path: Path) -> None:
    import torch

    from tests.integration.test_ddp import assert_same_weights, free_port, run_worker_group

    single, ddp, fsdp = tmp_path / "single.pt", tmp_path / "ddp.pt", tmp_path / "fsdp.pt"
    run_worker_group(
        [
            ["--strategy", "single", "--batch", str(2 * BATCH), "--out", str(single)],
            ["--strategy", "ddp", "--devices", "2", "--batch", str(BATCH), "--out", str(ddp)],
            ["--strategy", "fsdp", "--devices", "2", "--batch", str(BATCH), "--out", str(fsdp)],
        ],
        [{}, {"MASTER_PORT": str(free_port())}, {"MASTER_PORT": str(free_port())}],
        timeout=300,
        worker=WORKER,
    )
    ref = torch.load(single)
    assert_same_weights(torch.load(ddp), ref)
    assert_same_weights(torch.load(fsdp), ref)
    import lightning.pytorch as pl

    pl.seed_everything(0, verbose=False)
    initial = _task(None).net.state_dict()
    assert max((ref[k] - v).abs().max() for k, v in initial.items()) > 1e-3  # training moved the weights


@pytest.mark.integration
@pytest.mark.ddp
def test_flow_with_random_pixel_subsets_under_ddp(tmp_path: Path) -> None:
    import torch

    from tests.integration.test_ddp import free_port, run_worker_group

    out = tmp_path / "ddp_subset.pt"
    run_worker_group(
        [["--strategy", "ddp", "--devices", "2", "--batch", str(BATCH), "--train-queries", "20", "--out", str(out)]],
        [{"MASTER_PORT": str(free_port())}],
        timeout=300,
        worker=WORKER,
    )
    assert all(torch.isfinite(v).all() for v in torch.load(out).values())


if __name__ == "__main__":
    worker(sys.argv[1:])
