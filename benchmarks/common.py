"""Shared benchmark machinery: one training step, interleaved timing, peak memory in a fresh subprocess, results.

Timing. Every figure that is compared is measured side by side in one process: `time_interleaved` runs round
r of every entry before round r + 1 of any, so a burst of load from other processes hits all entries alike, and
reports the median over rounds. Wall time is the figure; process CPU time is kept alongside (less sensitive to
other processes on a shared machine, but it counts threads that spin while they wait).

Peak memory. `peak_memory` runs one entry in a fresh Python process (`python -m benchmarks.common`), so no
allocator cache, autograd graph or earlier model of another entry can leak into it:
  CPU:  peak resident set size (VmHWM, reset just before the build) minus the resident size just before the
        model is built
        (after `import torch` and the builder module's `preload()`, which imports the libraries the entry uses),
        i.e. what parameters, gradients, optimizer state, the batch and the activations of the steps cost.
        tracemalloc does not see torch's allocations; RSS does.
  CUDA: torch.cuda.max_memory_allocated() over the same steps in the fresh process (everything the process put
        on the device; the caching allocator's reserve is not counted).
An entry is named by `module:function` plus JSON keyword arguments; the function returns a `Step`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


@dataclass
class Step:
    """One training step of a model on a fixed batch: `run()` does forward, backward and the optimizer step."""

    run: Callable[[], None]
    batch_size: int
    params: int
    model: torch.nn.Module | None = None


def autocast(device: str, bf16: bool):
    return torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def make_step(
    model: torch.nn.Module,
    forward: Callable[[], torch.Tensor],
    target: torch.Tensor,
    device: str,
    bf16: bool = False,
    lr: float = 1e-4,
) -> Step:
    """forward() -> logits (B, K); cross-entropy against target; AdamW with fused=True for every model (the
    fused kernel exists on CPU and CUDA; on CPU it cut the optimizer step by ~40% against torch's default
    for-loop, see README), so that a slow default optimizer does not dilute the differences between models."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)

    def run() -> None:
        with autocast(device, bf16):
            loss = torch.nn.functional.cross_entropy(forward().float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return Step(run, target.shape[0], sum(p.numel() for p in model.parameters()), model)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    steps: dict[str, Step], device: str, rounds: int, steps_per_round: int = 1, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Median seconds per step of each entry, the entries interleaved round by round.

    Returns {name: {"step_s", "cpu_s", "samples_per_s", "rounds"}} (wall and process-CPU seconds per step)."""
    for s in steps.values():
        for _ in range(warmup):
            s.run()
    sync(device)
    wall: dict[str, list[float]] = {n: [] for n in steps}
    cpu: dict[str, list[float]] = {n: [] for n in steps}
    for r in range(rounds):
        names = list(steps) if r % 2 == 0 else list(reversed(steps))  # alternate the order: no fixed position bias
        for n in names:
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps_per_round):
                steps[n].run()
            sync(device)
            wall[n].append((time.perf_counter() - t0) / steps_per_round)
            cpu[n].append((time.process_time() - c0) / steps_per_round)
    out = {}
    for n, s in steps.items():
        w = statistics.median(wall[n])
        out[n] = {
            "step_s": w,
            "cpu_s": statistics.median(cpu[n]),
            "samples_per_s": s.batch_size / w,
            "rounds": rounds,
            "spread": (max(wall[n]) - min(wall[n])) / w if w else 0.0,
        }
    return out


# ------------------------------------------------------------------------------------------ memory (subprocess)
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's own RSS high-water mark (VmHWM). Not getrusage's ru_maxrss: Linux carries that over from
    the parent through fork + exec, so a child of a big benchmark process would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("benchmarks.common: no VmHWM in /proc/self/status (peak memory needs Linux)")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so that import-time transients are not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _warm_runtime(device: str) -> None:
    """One tiny training step, so that kernels and thread pools loaded on first use are not counted."""
    lin, norm = torch.nn.Linear(8, 24, device=device), torch.nn.LayerNorm(8, device=device)
    opt = torch.optim.AdamW([*lin.parameters(), *norm.parameters()])
    q, k, v = lin(norm(torch.randn(2, 4, 8, device=device))).view(2, 4, 3, 8).unbind(2)
    a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.nn.functional.cross_entropy(
        torch.nn.functional.gelu(a).mean(1), torch.zeros(2, dtype=torch.long, device=device)
    ).backward()
    opt.step()
    sync(device)


def _measure_here(builder: str, kwargs: dict[str, Any], steps: int) -> dict[str, Any]:
    module, fn = builder.split(":")
    mod = importlib.import_module(module)
    build = getattr(mod, fn)
    if hasattr(mod, "preload"):  # import libraries first: their code is not training memory
        mod.preload()
    device = kwargs.get("device", "cpu")
    _warm_runtime(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = _rss_bytes()
    _reset_peak_rss()
    step = build(**kwargs)
    for _ in range(steps):
        step.run()
    sync(device)
    if device.startswith("cuda"):
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "method": "cuda max_memory_allocated"}
    return {"peak_bytes": _peak_rss_bytes() - base, "method": "peak RSS (VmHWM) - RSS before build (fresh process)"}


def peak_memory(builder: str, kwargs: dict[str, Any], steps: int = 2, timeout: float = 3600) -> dict[str, Any]:
    """Peak memory of `steps` training steps of builder(**kwargs) in a fresh process; see the module docstring.
    Returns {"peak_bytes", "method"} or {"error": ...} (e.g. out of memory)."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.common",
        "--builder",
        builder,
        "--kwargs",
        json.dumps(kwargs),
        "--steps",
        str(steps),
        "--threads",
        str(torch.get_num_threads()),
    ]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {"error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else '?'}"}
    return json.loads(lines[-1])


# -------------------------------------------------------------------------------------------------- results
def environment(device: str) -> dict[str, Any]:
    env = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device,
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "load_avg": os.getloadavg(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
    return env


def write_result(name: str, result: dict[str, Any], markdown: str, out_dir: str = RESULTS) -> str:
    """Writes <out_dir>/<name>.json and <name>.md; returns the JSON path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(markdown)
    return path


def publish(args: argparse.Namespace, default_name: str, result: dict[str, Any], markdown: str) -> dict[str, Any]:
    """A benchmark's last step: write <name>.json and <name>.md (`--name`, default `default_name`) into
    `--out-dir`, print the table, return the result."""
    write_result(args.name or default_name, result, markdown, args.out_dir)
    print(markdown)
    return result


def model_configs(args: argparse.Namespace) -> list[str]:
    """The model sizes a run covers unless `--configs` names them: toy (`--toy`), small and medium (`--quick`),
    or those and the paper's ImageNet shape."""
    return args.configs or (
        ["toy"] if args.toy else ["small", "medium"] if args.quick else ["small", "medium", "imagenet"]
    )


def fmt_bytes(b: float | None) -> str:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return "-"
    return f"{b / 2**20:,.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (default on cuda)")
    p.add_argument(
        "--fp32",
        action="store_true",
        help="on cuda: plain fp32, no autocast and no TF32 (default there: bf16 autocast, TF32 for what stays fp32)",
    )
    p.add_argument("--quick", action="store_true", help="small sizes only, few rounds")
    p.add_argument("--toy", action="store_true", help="tiny sizes: a smoke test of the script, not a measurement")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out-dir", default=RESULTS)
    p.add_argument(
        "--name",
        default=None,
        help="result file stem (default: the benchmark's name), e.g. "
        "peers_imagenet for a separate run of one config; the summary folds in <benchmark>*.json",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    return p


def setup(args: argparse.Namespace) -> None:
    """Threads, CUDA flags, and the host allocator setting `perceiver-lit` trains with (perceiver_lit/host_memory.py:
    freed activations stay in the heap), for every model of the run alike."""
    from perceiver_lit.host_memory import tune_host_allocator

    if args.fp32 and args.bf16:
        raise SystemExit("--fp32 and --bf16 exclude each other")
    tune_host_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device visible to torch")
        args.bf16 = not args.fp32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not args.fp32


def main() -> None:
    """The memory probe: python -m benchmarks.common --builder mod:fn --kwargs JSON -> one JSON line."""
    p = argparse.ArgumentParser(description="peak memory of a few training steps, in this fresh process")
    p.add_argument("--builder", required=True)
    p.add_argument("--kwargs", default="{}")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    from perceiver_lit.host_memory import tune_host_allocator

    tune_host_allocator()  # as in the timed runs (setup)
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(_measure_here(a.builder, json.loads(a.kwargs), a.steps)), flush=True)


if __name__ == "__main__":
    main()
