"""The host allocator setting: in a fresh process, a step's worth of activations freed and made again no longer
page-faults on most of their pages; PERCEIVER_LIT_MALLOC=system leaves glibc as it is."""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

PROBE = r"""
import json, resource, sys
import torch
from perceiver_lit.host_memory import tune_host_allocator
applied = tune_host_allocator()
assert tune_host_allocator() == applied                      # idempotent
def step():                                                  # activations of a training step: made, then freed
    ts = [torch.empty(2**18) for _ in range(40)]             # 40 x 1 MiB
    for t in ts:
        t.fill_(1.0)                                         # first write: a page fault per fresh 4 KiB page
    del ts
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(**env) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_activations_are_reused_without_page_faults():
    system, tuned = _probe(PERCEIVER_LIT_MALLOC="system"), _probe(PERCEIVER_LIT_MALLOC="")
    assert not system["applied"] and tuned["applied"]
    assert system["faults"] > 10 * 1000  # glibc's defaults return the freed heap: ~2,000 fresh pages a step
    assert tuned["faults"] < system["faults"] / 3
