"""Utilization: achieved FLOP/s of a training step over the FLOP/s of a large matmul, same dtype, device and run.

    python -m benchmarks.mfu [--quick] [--device cuda] [--configs small medium imagenet]

Achieved = batch x 3 x model.flops_per_sample() / step seconds (forward FLOPs from the analytic count, matmuls
only, 2 x multiply-adds; backward counted as 2x forward). Reference = 2 n^3 / seconds of an n x n @ n x n matmul
(n = 2048 fp32 on CPU, 8192 bf16 on CUDA), timed interleaved with the training steps so that both see the same
load. Utilization = achieved / reference: the fraction of what this device does on the easiest possible work.
The models are ours at benchmarks/peers.py's configs (Perceiver and Perceiver IO).

flops_per_sample() counts what runs: cross-attends that absorb their k/v projections (models/attention.py) do
fewer FLOPs than the textbook layer. The last column divides the textbook count instead (k, v projected from
every input, as the papers count), i.e. the usual "model FLOPs" of an MFU; the goal is judged on the first.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks import common, peers  # noqa: E402


def matmul_step(device: str, bf16: bool, n: int) -> tuple[common.Step, int]:
    dtype = torch.bfloat16 if bf16 else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    reps = 1 if device == "cpu" else 20

    def run() -> None:
        for _ in range(reps):
            torch.mm(a, b)

    return common.Step(run, batch_size=1, params=0), 2 * n**3 * reps


def projected_flops_per_sample(model: torch.nn.Module) -> int:
    """model.flops_per_sample() with every cross-attend on its projected path (k, v from every input)."""
    from perceiver_lit.models.attention import projected_cross_attention

    with projected_cross_attention(model):
        return model.flops_per_sample()


def run(
    configs: list[str], device: str, bf16: bool, rounds: int, n: int, short_imagenet: bool = True
) -> dict[str, Any]:
    rows = []
    for config in configs:
        mm, mm_flops = matmul_step(device, bf16, n)
        steps = {"matmul": mm}
        for group in peers.GROUPS:
            steps[group] = peers.build(group, "ours", config, device, bf16)
        slow = short_imagenet and config == "imagenet" and device == "cpu"  # minutes a step on a busy CPU
        times = common.time_interleaved(steps, device, 1 if slow else rounds, warmup=0 if slow else 1)
        peak = mm_flops / times["matmul"]["step_s"]
        peak_cpu = mm_flops / times["matmul"]["cpu_s"]
        for group in peers.GROUPS:
            st = steps[group]
            flops = 3 * st.model.flops_per_sample() * st.batch_size
            achieved = flops / times[group]["step_s"]
            projected = 3 * projected_flops_per_sample(st.model) * st.batch_size
            rows.append(
                {
                    "config": config,
                    "model": group,
                    "batch": st.batch_size,
                    "flops_per_step": flops,
                    "step_s": round(times[group]["step_s"], 5),
                    "achieved_flops_per_s": achieved,
                    "matmul_flops_per_s": peak,
                    "utilization": round(achieved / peak, 4),
                    # by process CPU time: steadier on a shared machine (exact with --threads 1)
                    "utilization_cpu_time": round(flops / times[group]["cpu_s"] / peak_cpu, 4),
                    "projected_flops_per_step": projected,
                    "utilization_projected_flops": round(projected / times[group]["step_s"] / peak, 4),
                }
            )
            print(
                f"{config}/{group}: {achieved / 1e9:.1f} GFLOP/s of {peak / 1e9:.1f} ({100 * achieved / peak:.1f}%)",
                flush=True,
            )
        del steps
    return {"env": common.environment(device), "bf16": bf16, "matmul_n": n, "rounds": rounds, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    dt = "bf16" if result["bf16"] else "fp32"
    lines = [
        f"# Utilization ({env['time_utc']} UTC, {env['device']} {dt}, load {env['load_avg'][0]:.1f})",
        "",
        f"Achieved training FLOP/s (3 x flops_per_sample() x batch / step time) over a {result['matmul_n']}^2 "
        f"{dt} matmul's FLOP/s in the same run; median of {result['rounds']} interleaved rounds.",
        "",
        "The last column counts the textbook FLOPs (k, v projected from every input) instead of those that run.",
        "",
        "| config | model | batch | GFLOP/step | step s | achieved GFLOP/s | matmul GFLOP/s | utilization "
        "(by CPU time) | by the projected count |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['config']} | {r['model']} | {r['batch']} | {r['flops_per_step'] / 1e9:.1f} | "
            f"{r['step_s']:.3f} | {r['achieved_flops_per_s'] / 1e9:.1f} | "
            f"{r['matmul_flops_per_s'] / 1e9:.1f} | **{100 * r['utilization']:.1f}%** "
            f"({100 * r.get('utilization_cpu_time', float('nan')):.1f}%) | "
            f"{100 * r.get('utilization_projected_flops', float('nan')):.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=None, choices=sorted(peers.CONFIGS))
    p.add_argument("--matmul-n", type=int, default=None)
    args = p.parse_args(argv)
    common.setup(args)
    n = args.matmul_n or (256 if args.toy else 8192 if args.device.startswith("cuda") else 2048)
    result = run(
        common.model_configs(args),
        args.device,
        args.bf16,
        args.rounds or (2 if args.toy else 5),
        n,
        short_imagenet=args.rounds is None,
    )
    return common.publish(args, "mfu", result, markdown(result))


if __name__ == "__main__":
    main()
