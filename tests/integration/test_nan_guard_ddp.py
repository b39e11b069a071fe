"""NanGuard under real 2-process gloo DDP: a non-finite loss on rank 1 only stops BOTH ranks at the same step.

Without a collective decision rank 1 raises alone and rank 0 waits in the gradient all-reduce until the
process-group timeout. The ranks are started by hand, as torchrun/srun would (LOCAL_RANK etc. set), so neither
kills the other and each reports its own error. The same file is the worker:
`python tests/integration/test_nan_guard_ddp.py OUT_DIR` with the rank env set.
"""

from __future__ import annotations

import json
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
POISON_RANK, POISON_STEP = 1, 2
PG_TIMEOUT_S = 60  # a regression fails (or errors) after this instead of hanging for the default 30 min


# --- the worker --------------------------------------------------------------------------------------------------


def worker(out: Path) -> None:
    from datetime import timedelta

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.strategies import DDPStrategy

    from perceiver_lit.callbacks import NanGuard, NonFiniteLossError
    from perceiver_lit.distributed import destroy_process_group

    class Poisoned(pl.LightningModule):
        """A linear classifier whose loss turns NaN on rank POISON_RANK at step POISON_STEP, and only there."""

        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 3)

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            loss = torch.nn.functional.cross_entropy(self.net(batch["inputs"]), batch["target"])
            if self.global_rank == POISON_RANK and self.global_step == POISON_STEP:
                loss = loss * float("nan")
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    samples = [{"inputs": torch.randn(4, generator=g), "target": i % 3, "key": f"s{i}"} for i in range(32)]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=DDPStrategy(timeout=timedelta(seconds=PG_TIMEOUT_S)),
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[NanGuard()],
    )
    rank = int(os.environ["RANK"])
    t0 = time.monotonic()
    try:
        trainer.fit(Poisoned(), train_dataloaders=torch.utils.data.DataLoader(samples, batch_size=2))
        result = {"error": None}
    except NonFiniteLossError as e:
        result = {"error": str(e)}
    result.update(
        rank=rank, global_rank=trainer.global_rank, global_step=trainer.global_step, fit_s=time.monotonic() - t0
    )
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    destroy_process_group(barrier=False)  # after an error: a barrier could wait for a rank that has left


# --- the test ------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
@pytest.mark.ddp
def test_nonfinite_loss_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    from tests.fixtures.slurm import processes_with_env

    marker, port = uuid.uuid4().hex, str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "WORLD_SIZE": "2",
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "NODE_RANK": "0",
                "PLIT_TEST_RUN": marker,
            },
        )
        for r in range(2)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=PG_TIMEOUT_S + 60)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, f"worker failed ({p.returncode}):\n{out[-4000:]}"
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert (r0["global_rank"], r1["global_rank"]) == (0, 1)

    # Both ranks raised, at the poisoned step, before its optimizer step...
    assert r0["error"] and r1["error"], (r0, r1)
    assert r0["global_step"] == r1["global_step"] == POISON_STEP
    # ...rank 1 with its own loss and batch keys, rank 0 pointing at another rank...
    assert f"training loss is nan on global rank 1 of 2 at global step {POISON_STEP} " in r1["error"]
    assert "batch keys: ['s" in r1["error"]
    assert f"another rank saw a non-finite training loss at global step {POISON_STEP} " in r0["error"]
    assert "(global rank 0 of 2) was " in r0["error"] and "batch keys: [" not in r0["error"]
    # ...and promptly: nobody sat in a collective until the process-group timeout.
    assert max(r0["fit_s"], r1["fit_s"]) < PG_TIMEOUT_S / 2, (r0["fit_s"], r1["fit_s"])

    deadline = time.monotonic() + 10
    while (left := processes_with_env("PLIT_TEST_RUN", marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left behind: {left}"


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
