"""perceiver_lit.hardware: bf16 autocast on a CPU without native bf16 gets a warning naming trainer.precision."""

import pytest

from perceiver_lit.hardware import cpu_has_native_bf16, warn_if_bf16_is_emulated

# the flags lines of real /proc/cpuinfo files (shortened): Sapphire Rapids (this repo's CI), Skylake-SP, Graviton3
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512dq avx512bw avx512vl\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve i8mm bf16 sve2\n"


def test_native_bf16_read_from_cpu_flags():
    assert cpu_has_native_bf16(SAPPHIRE_RAPIDS) is True
    assert cpu_has_native_bf16(GRAVITON3) is True
    assert cpu_has_native_bf16(SKYLAKE) is False
    assert cpu_has_native_bf16("no flags here\n") is None      # unreadable: nothing claimed
    assert cpu_has_native_bf16() in (True, False, None)          # this machine's own /proc/cpuinfo parses


def test_warns_only_for_bf16_on_a_cpu_without_it():
    with pytest.warns(UserWarning, match=r"trainer.precision='bf16-mixed' on a CPU without native bf16"):
        assert warn_if_bf16_is_emulated("bf16-mixed", "cpu", SKYLAKE)
    assert not warn_if_bf16_is_emulated("bf16-mixed", "cpu", SAPPHIRE_RAPIDS)
    assert not warn_if_bf16_is_emulated("32-true", "cpu", SKYLAKE)
    assert not warn_if_bf16_is_emulated("bf16-mixed", "cuda", SKYLAKE)
    assert not warn_if_bf16_is_emulated("bf16-mixed", "cpu", "")  # unknown CPU: no claim
