"""`freeze` under DDP and FSDP2 (CPU, gloo, 2 real processes): frozen parameters stay bit-identical through training
while the rest trains. The same file is the worker (`python tests/integration/test_freeze_distributed.py
--strategy fsdp --out W.pt`), launched like tests/integration/test_ddp.py's."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve()
ROOT = WORKER.parents[2]
FREEZE = ["adapter.*", "cross_attends.0.*", "latents"]


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--strategy", choices=["ddp", "fsdp"], required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.strategies import DDPStrategy

    from perceiver_lit.distributed import DestroyProcessGroup, FSDP2Strategy
    from perceiver_lit.models import ImageAdapter, Perceiver
    from perceiver_lit.tasks import Classification
    from tests.integration.test_ddp import _data

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    # A learned position table in the adapter, so that "adapter.*" freezes something.
    net = Perceiver(
        ImageAdapter((8, 8, 1), num_frequency_bands=4, position_encoding="learned", num_position_channels=8),
        num_classes=4,
        num_latents=8,
        latent_dim=16,
        num_cross_attends=2,
        num_blocks=2,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
    )
    task = Classification(net, num_classes=4, lr=1e-2, schedule="constant", eps=1e-3, freeze=FREEZE)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    strategy = DDPStrategy() if args.strategy == "ddp" else FSDP2Strategy(param_dtype=None, reduce_dtype=None)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=3,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        callbacks=[] if args.strategy == "fsdp" else [DestroyProcessGroup()],
    )
    trainer.fit(task, datamodule=_data(4, 4 * 2 * 3))
    if args.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from perceiver_lit.distributed import destroy_process_group

        state = get_model_state_dict(task.net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        destroy_process_group()
    else:
        state = task.net.state_dict()
    if trainer.is_global_zero:
        torch.save({"before": before, "after": {k: v.detach().cpu().clone() for k, v in state.items()}}, args.out)


@pytest.mark.integration
@pytest.mark.ddp
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_frozen_parameters_stay_bit_identical_under_ddp_and_fsdp2(tmp_path: Path, strategy: str) -> None:
    import torch

    from tests.integration.test_ddp import free_port

    out = tmp_path / "w.pt"
    proc = subprocess.run(
        [sys.executable, str(WORKER), "--strategy", strategy, "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "MASTER_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w = torch.load(out)
    frozen = [k for k in w["before"] if k.startswith(("adapter.", "cross_attends.0.")) or k == "latents"]
    assert "adapter.pos.embeddings" in frozen and "cross_attends.0.to_q.weight" in frozen
    for k in frozen:
        assert torch.equal(w["after"][k], w["before"][k]), k
    assert not torch.equal(w["after"]["cross_attends.1.to_q.weight"], w["before"]["cross_attends.1.to_q.weight"])
    assert not torch.equal(w["after"]["head.weight"], w["before"]["head.weight"])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    worker(sys.argv[1:])
