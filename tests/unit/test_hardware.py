"""perceiver_lit.hardware: bf16 autocast on a CPU without native bf16 gets a warning naming trainer.precision."""

import os
import shutil
import subprocess

import pytest
from lightning.pytorch import Trainer

from perceiver_lit.hardware import cpu_has_native_bf16, warn_if_bf16_is_emulated

# the flags lines of real /proc/cpuinfo files (shortened): Sapphire Rapids (this repo's machine), Skylake-SP,
# Graviton3 (Neoverse V1: bf16), Graviton2 (Neoverse N1: none)
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512dq avx512bw avx512vl\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16 sve2\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp\n"


def test_native_bf16_read_from_cpu_flags():
    assert cpu_has_native_bf16(SAPPHIRE_RAPIDS) is True
    assert cpu_has_native_bf16(GRAVITON3) is True
    assert cpu_has_native_bf16(SKYLAKE) is False
    assert cpu_has_native_bf16(GRAVITON2) is False
    assert cpu_has_native_bf16("no flags here\n") is None  # unreadable: nothing claimed


@pytest.mark.skipif(not (os.path.exists("/proc/cpuinfo") and shutil.which("lscpu")), reason="needs Linux and lscpu")
def test_this_machine_agrees_with_lscpu():
    """This machine, judged by the command configs/trainer/cpu_bf16.yaml tells users to run (lscpu's flags), not
    by the function itself."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"})
    flags = {
        f
        for line in out.stdout.splitlines()
        if line.startswith(("Flags:", "Features:"))
        for f in line.split(":", 1)[1].split()
    }
    assert flags, out.stdout
    assert cpu_has_native_bf16() is bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def test_warns_only_for_bf16_on_a_cpu_without_it():
    with pytest.warns(UserWarning, match=r"trainer.precision='bf16-mixed' on a CPU without native bf16"):
        assert warn_if_bf16_is_emulated("bf16-mixed", "cpu", SKYLAKE)
    assert not warn_if_bf16_is_emulated("bf16-mixed", "cpu", SAPPHIRE_RAPIDS)
    assert not warn_if_bf16_is_emulated("32-true", "cpu", SKYLAKE)
    assert not warn_if_bf16_is_emulated("bf16-mixed", "cuda", SKYLAKE)
    assert not warn_if_bf16_is_emulated("bf16-mixed", "cpu", "")  # unknown CPU: no claim


def test_the_cli_hook_arguments_from_a_real_trainer():
    """What cli.py passes (trainer.precision, the strategy's root device type), from real CPU Trainers."""
    for strategy in ("auto", "ddp"):
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            strategy=strategy,
            precision="bf16-mixed",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
        )
        with pytest.warns(UserWarning, match="bf16 is emulated"):
            assert warn_if_bf16_is_emulated(trainer.precision, trainer.strategy.root_device.type, SKYLAKE)
    fp32 = Trainer(accelerator="cpu", devices=1, precision="32-true", logger=False, enable_checkpointing=False)
    assert not warn_if_bf16_is_emulated(fp32.precision, fp32.strategy.root_device.type, SKYLAKE)
