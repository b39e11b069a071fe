"""FSDP2 on CPU with gloo, real processes: 2 sharded ranks x batch B match 1 process x batch 2B; the sharded
checkpoint consolidates into one file holding the same weights; shared layers become one FSDP unit each."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from perceiver_lit.distributed import shard_targets
from tests.integration.test_ddp import (
    BATCH,
    ROOT,
    STEPS,
    _tiny_task,
    assert_same_weights,
    assert_within_bf16_rounding,
    free_port,
    initial_weights,
    run_worker_group,
    single_process_weights,
)


@pytest.mark.integration
@pytest.mark.ddp
def test_fsdp2_two_ranks_match_one_rank_and_checkpoint_consolidates(tmp_path: Path) -> None:
    out, sharded = tmp_path / "fsdp.pt", tmp_path / "sharded.ckpt"
    run_worker_group(
        [
            [
                "--strategy",
                "fsdp",
                "--devices",
                "2",
                "--batch",
                str(BATCH),
                "--out",
                str(out),
                "--sharded-ckpt",
                str(sharded),
            ]
        ],
        [{"MASTER_PORT": str(free_port())}],
    )
    fsdp = torch.load(out)
    assert_same_weights(fsdp, single_process_weights(tmp_path))

    # A distributed checkpoint: a folder with one shard file per rank.
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == 2
    full_path = tmp_path / "full.ckpt"
    subprocess.run(
        [sys.executable, "-m", "perceiver_lit.distributed", "consolidate", str(sharded), str(full_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    full = torch.load(full_path, weights_only=False)
    assert full["global_step"] == STEPS
    assert full["optimizer_states"] and full["optimizer_states"][0]["state"], "optimizer state was not consolidated"
    net_state = {k.removeprefix("net."): v for k, v in full["state_dict"].items() if k.startswith("net.")}
    assert_same_weights(net_state, fsdp, atol=0)
    # The consolidated file loads into a plain, unsharded task.
    task = _tiny_task()
    task.load_state_dict(full["state_dict"])
    assert torch.equal(task.net.latents.detach(), fsdp["latents"])


@pytest.mark.integration
@pytest.mark.ddp
def test_lamb_under_fsdp2_uses_whole_tensor_norms(tmp_path: Path) -> None:
    """LAMB's trust ratio needs each tensor's whole norm: with parameters sharded over 2 ranks (its norms summed
    over the shards in one all-reduce) it must train exactly as one process does."""
    single, fsdp = tmp_path / "single_lamb.pt", tmp_path / "fsdp_lamb.pt"
    run_worker_group(
        [
            ["--strategy", "single", "--batch", str(2 * BATCH), "--out", str(single), "--optimizer", "lamb"],
            ["--strategy", "fsdp", "--devices", "2", "--batch", str(BATCH), "--out", str(fsdp), "--optimizer", "lamb"],
        ],
        [{}, {"MASTER_PORT": str(free_port())}],
    )
    assert_same_weights(torch.load(fsdp), torch.load(single), atol=1e-6)


@pytest.mark.integration
@pytest.mark.ddp
def test_fsdp2_as_shipped_bf16_two_ranks_match_one_rank_within_bf16_rounding(tmp_path: Path) -> None:
    """configs/trainer/fsdp.yaml's precision and strategy (bf16 autocast, MixedPrecisionPolicy param_dtype bfloat16,
    reduce_dtype float32): 2 sharded ranks x batch B against the same FSDP2 setup on 1 rank x batch 2B. The
    reference is FSDP2 itself because its bf16 parameters (norms and all) compute differently from plain bf16
    autocast (by ~6 n lr u RMS here); what sharding over ranks changes must stay within bf16's rounding."""
    one, two = tmp_path / "fsdp_1rank.pt", tmp_path / "fsdp_2ranks.pt"
    run_worker_group(
        [
            ["--strategy", "fsdp", "--devices", "1", "--batch", str(2 * BATCH), "--out", str(one), "--shipped"],
            ["--strategy", "fsdp", "--devices", "2", "--batch", str(BATCH), "--out", str(two), "--shipped"],
        ],
        [{"MASTER_PORT": str(free_port())}, {"MASTER_PORT": str(free_port())}],
    )
    assert_within_bf16_rounding(torch.load(two), torch.load(one), initial_weights())


def test_shared_layers_are_sharded_once() -> None:
    from perceiver_lit.models import ImageAdapter, Perceiver

    # 6 cross-attends sharing one after the first, 6 blocks sharing one latent block of 3 layers.
    net = Perceiver(
        ImageAdapter((4, 4, 1), num_frequency_bands=2),
        num_classes=3,
        num_latents=4,
        latent_dim=8,
        num_cross_attends=6,
        num_blocks=6,
        num_self_attends_per_block=3,
        num_self_attention_heads=2,
    )
    targets = shard_targets(net)
    assert len(targets) == len({id(t) for t in targets}) == 2 + 3
    params = [id(p) for t in targets for p in t.parameters()]
    assert len(params) == len(set(params)), "a parameter would belong to two FSDP units"


def test_tied_parameters_across_layers_stay_with_the_root() -> None:
    from perceiver_lit.models.attention import SelfAttentionLayer

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = SelfAttentionLayer(8, num_heads=2), SelfAttentionLayer(8, num_heads=2)
            self.b.proj = self.a.proj  # one Linear in two different layers

    net = Tied()
    targets = shard_targets(net)
    assert len(targets) == 1  # the second layer sharing a weight is left to the root unit


@pytest.mark.integration
@pytest.mark.ddp
def test_fsdp_yaml_through_the_cli_on_two_cpu_ranks(tmp_path: Path, fashion_shards) -> None:
    """configs/trainer/fsdp.yaml as shipped (bf16 MixedPrecisionPolicy + bf16 autocast) through `perceiver-lit fit`
    with Lightning's own launcher: sharded last.ckpt folder, consolidated into one fp32 file; then `perceiver-lit fit
    --ckpt_path <run>/checkpoints/last.ckpt` resumes from that folder and trains on."""
    import os
    import uuid

    from perceiver_lit.distributed import consolidate_checkpoint
    from tests.fixtures.slurm import QUICKSTART, csv_steps, processes_with_env, tiny_fit_config

    steps = 400 // (2 * 16)  # one epoch of the fixture shards: ends with validation and a checkpoint
    config = tiny_fit_config(tmp_path / "tiny.yaml", fashion_shards, max_steps=steps, log_dir=tmp_path)
    run, marker = tmp_path / "run", uuid.uuid4().hex
    cli = ROOT / ".venv" / "bin" / "perceiver-lit"
    cmd = [
        str(cli) if cli.exists() else "perceiver-lit",
        "fit",
        "--config",
        str(QUICKSTART),
        "--config",
        str(config),
        "--config",
        str(ROOT / "configs" / "trainer" / "fsdp.yaml"),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.default_root_dir",
        str(run),
    ]
    env = {**os.environ, "MASTER_PORT": str(free_port()), "PLIT_TEST_RUN": marker}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    last = run / "checkpoints" / "last.ckpt"
    assert last.is_dir() and len(list(last.glob("*.distcp"))) == 2, "expected a sharded checkpoint folder"
    full = torch.load(consolidate_checkpoint(last, tmp_path / "full.ckpt"), weights_only=False)
    assert full["global_step"] == steps
    weights = full["state_dict"]
    assert weights["net.latents"].dtype == torch.float32  # fp32 master weights, bf16 only in compute
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert list(csv_steps(tmp_path).values()) == [list(range(steps))]
    assert len(full["callbacks"]["PreemptionCheckpoint"]["rng"]) == 2  # each rank's RNG state, gathered
    assert not processes_with_env("PLIT_TEST_RUN", marker), "a rank was left behind"

    # docs/cluster.md: resume from the sharded folder directly, with --ckpt_path (the command a user types).
    more = 3
    resume = [*cmd, "--ckpt_path", str(last), "--trainer.max_steps", str(steps + more)]
    env["MASTER_PORT"] = str(free_port())
    proc = subprocess.run(resume, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    resumed = torch.load(consolidate_checkpoint(last, tmp_path / "resumed.ckpt"), weights_only=False)
    assert resumed["global_step"] == steps + more
    # The second run logged only its own `more` steps, at their global steps: after the first run's, none repeated
    # from zero, none one ahead (Lightning alone counts the last step of this end-of-epoch checkpoint twice on
    # resume: lightning_private.uncount_restored_step).
    first, second = csv_steps(tmp_path).values()
    assert first == list(range(steps)) and second == list(range(steps, steps + more)), second
    # The restored cosine schedule ends at the first run's last step (lr 0 from there; the task warns about exactly
    # this), so the resumed steps leave the restored weights as saved: equal to them, which a fresh start (another
    # init, a new schedule) would not be. The optimizer's step counts went on from the saved ones.
    assert "The schedule restored from the checkpoint ends at step" in proc.stdout + proc.stderr
    assert resumed["state_dict"].keys() == weights.keys()
    assert all(torch.equal(resumed["state_dict"][k], weights[k]) for k in weights)
    assert {float(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()} == {steps + more}
    assert not processes_with_env("PLIT_TEST_RUN", marker), "a rank was left behind"


_MAPS_UNDER_FSDP2 = """
import sys, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from perceiver_lit.callbacks.attention_maps import AttentionMaps, first_cross_attention
from perceiver_lit.distributed import ShardOptions, shard_model
from perceiver_lit.models import ImageAdapter, Perceiver

port, rank, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
try:
    def maps(net):
        cb = AttentionMaps(num_latents=3, num_samples=2)
        net.eval()
        cb.attach(first_cross_attention(net))
        with torch.no_grad():
            net(x)
        return cb.detach()

    torch.manual_seed(0)  # every rank builds the same model and input
    make = lambda: Perceiver(ImageAdapter((4, 4, 1), num_frequency_bands=2), num_classes=3, num_latents=8,
                             latent_dim=16, num_cross_attends=2, num_self_attends_per_block=1,
                             num_self_attention_heads=2)
    x = torch.randn(3, 4, 4, 1)
    reference = make()
    ids, expected = maps(reference)
    u = 2.0**-8  # bf16's unit roundoff
    for param_dtype in (None, "bfloat16"):
        net = make()
        net.load_state_dict(reference.state_dict())
        shard_model(net, init_device_mesh("cpu", (world,)), ShardOptions(param_dtype=param_dtype))
        shard = next(p for p in net.parameters() if p.numel() > 1)
        assert shard.to_local().numel() < shard.numel(), "not sharded"  # each rank holds part of each parameter
        got_ids, got = maps(net)
        assert got_ids == ids and got.shape == expected.shape == (2, 3, 16), (got_ids, got.shape)
        if param_dtype is None:
            assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got - expected).abs().max()
        else:
            # softmax(s) moves by p * (ds_i - sum_j p_j ds_j): relative to each probability, at most twice the error
            # of the scores, which bf16 inputs and weights (rounded at ~4 places on the way) leave at <= ~4u |s|
            # with |s| < 1 here. 8u relative, plus u / 16 absolute for probabilities rounded near 0.
            err = ((got - expected).abs() / (expected + 1 / 16 / 8)).max()
            assert err <= 8 * u, (param_dtype, float(err), float((got - expected).abs().max()))
    print(f"maps ok on rank {rank}")
finally:
    dist.destroy_process_group()
"""


@pytest.mark.integration
@pytest.mark.ddp
def test_attention_maps_under_fsdp2_see_whole_parameters(tmp_path: Path) -> None:
    """AttentionMaps (on by default with W&B) computes its maps inside the layer's call, before FSDP2 reshards:
    with parameters sharded over 2 ranks, in fp32 and under a bf16 MixedPrecisionPolicy, each rank gets the
    unsharded model's maps."""
    script = tmp_path / "maps_fsdp2.py"
    script.write_text(_MAPS_UNDER_FSDP2)
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), port, str(r), "2"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"maps ok on rank {r}" in out, out[-4000:]
