"""What the CPU can do fast, for advice at start-up: bf16 autocast on a CPU pays only with bf16 matrix units.

On this repo's Xeon (AMX), a bf16 matmul runs 5.4x as fast as fp32 and `configs/trainer/cpu_bf16.yaml` trains the
benchmark models 1.4-2.6x faster (benchmarks/README.md). Without native bf16 (no AVX512-BF16 or AMX on x86, no BF16
extension on Arm), oneDNN emulates it with conversions and bf16 autocast is slower than fp32. `perceiver-lit` warns
about that combination instead of letting a run be silently slow.
"""

from __future__ import annotations

import platform

from lightning.pytorch.utilities import rank_zero_warn

# /proc/cpuinfo flags that mean bf16 matmuls in hardware: x86 "flags", Arm "Features"
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """True / False from the CPU flags (`cpuinfo`: the text of /proc/cpuinfo, read when not given); None when they
    cannot be read (not Linux), in which case nothing is claimed."""
    if cpuinfo is None:
        if platform.system() != "Linux":
            return None
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if not flags:
        return None
    return bool(flags & NATIVE_BF16_FLAGS)


def warn_if_bf16_is_emulated(precision: str, accelerator: str, cpuinfo: str | None = None) -> bool:
    """Warn (rank 0) when `trainer.precision` asks for bf16 on a CPU without native bf16; returns whether it
    warned. `accelerator`: the trainer's accelerator type ("cpu", "cuda", ...)."""
    if accelerator != "cpu" or not str(precision).startswith("bf16"):
        return False
    if cpu_has_native_bf16(cpuinfo) is not False:
        return False
    rank_zero_warn(
        f"trainer.precision={precision!r} on a CPU without native bf16 (no avx512_bf16 / amx_bf16 / bf16 "
        "in /proc/cpuinfo): bf16 is emulated there and trains slower than fp32. Use "
        "--trainer.precision 32-true (configs/trainer/cpu.yaml) on this machine."
    )
    return True
