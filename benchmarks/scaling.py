"""Scaling in the input size M: training-step time and peak memory of a Perceiver with fixed latents, against a
plain Transformer of the same width over the inputs; log-log slopes fitted to both.

    python -m benchmarks.scaling [--quick] [--device cuda] [--sizes 1024 4096 16384 65536]

Inputs are square images (M = side^2 pixels: 32^2 = 1k, 64^2 = 4k, 128^2 = 16k, 256^2 = 64k elements) with
Fourier features, so both models see the same (B, M, C) elements. The Perceiver's cost is O(M N) in the
cross-attend plus O(N^2) in the latents, so slope ~1 in M once the inputs dominate; the Transformer's
self-attention over the inputs is O(M^2).

The Transformer would exhaust the machine long before 64k inputs, so a size is skipped (and the reason recorded)
when either estimate is over its cap: memory from its attention matrices, B x heads x M^2 x 4 bytes x layers
(what a non-fused attention keeps for backward; a fused kernel keeps less, so this errs on the safe side) against
--max-transformer-gib; time by extrapolating its last measured step quadratically, against
--max-transformer-step-s.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import common  # noqa: E402

# fixed model: N latents x D width; the Transformer has D width, h heads and the Perceiver's layer count
MODEL = dict(latents=128, width=128, heads=4, self_attends=2, bands=8, batch=2)
TOY = dict(latents=8, width=16, heads=2, self_attends=1, bands=2, batch=1)


class PlainTransformer(nn.Module):
    """Linear(C -> D) over the elements, pre-LN Transformer encoder layers (SDPA), mean-pool, Linear head."""

    def __init__(self, in_channels: int, width: int, heads: int, layers: int, num_classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(in_channels, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=width, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, M, C) -> (B, K)
        return self.head(self.encoder(self.embed(x)).mean(1))


def preload() -> None:
    import perceiver_lit.models  # noqa: F401


def build(impl: str, size: int, device: str = "cpu", bf16: bool = False, toy: bool = False) -> common.Step:
    """Training step of "perceiver" or "transformer" at M = size input elements (memory probe entry too)."""
    from perceiver_lit.models import ImageAdapter, Perceiver

    cfg = TOY if toy else MODEL
    side = math.isqrt(size)
    if side * side != size:
        raise ValueError(f"scaling: size {size} is not a square number of pixels")
    torch.manual_seed(0)
    adapter = ImageAdapter((side, side, 3), num_frequency_bands=cfg["bands"], max_resolution=(side, side))
    x = torch.randn(cfg["batch"], side, side, 3, device=device)
    y = torch.randint(0, 10, (cfg["batch"],), device=device)
    if impl == "perceiver":
        model = Perceiver(
            adapter,
            num_classes=10,
            num_latents=cfg["latents"],
            latent_dim=cfg["width"],
            num_cross_attends=1,
            num_self_attends_per_block=cfg["self_attends"],
            num_self_attention_heads=cfg["heads"],
        ).to(device)
        forward = lambda: model(x)  # noqa: E731
    elif impl == "transformer":
        model = PlainTransformer(adapter.num_output_channels, cfg["width"], cfg["heads"], 1 + cfg["self_attends"]).to(
            device
        )
        adapter.to(device)
        forward = lambda: model(adapter(x)[0])  # noqa: E731  (the same Fourier elements)
    else:
        raise ValueError(f"scaling: impl must be 'perceiver' or 'transformer', got {impl!r}")
    return common.make_step(model, forward, y, device, bf16)


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x)."""
    pts = [(x, y) for x, y in zip(xs, ys) if y and y > 0]
    if len(pts) < 2:
        return None
    a, b = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(a, b, 1)[0])


def run(
    sizes: list[int],
    device: str,
    bf16: bool,
    rounds: int,
    toy: bool,
    max_gib: float,
    max_step_s: float,
    memory: bool = True,
) -> dict[str, Any]:
    cfg = TOY if toy else MODEL
    rows, last_transformer = [], None
    for m in sizes:
        impls = ["perceiver"]
        est_gib = cfg["batch"] * cfg["heads"] * m * m * 4 * (1 + cfg["self_attends"]) / 2**30
        skip = None
        if est_gib > max_gib:
            skip = f"attention matrices ~{est_gib:.1f} GiB > cap {max_gib} GiB"
        elif last_transformer and last_transformer[1] * (m / last_transformer[0]) ** 2 > max_step_s:
            skip = (
                f"predicted step {last_transformer[1] * (m / last_transformer[0]) ** 2:.0f} s > cap {max_step_s:.0f} s"
            )
        if skip is None:
            impls.append("transformer")
        steps = {i: build(i, m, device, bf16, toy) for i in impls}
        r = rounds if m <= 16384 else max(2, rounds // 2)
        times = common.time_interleaved(steps, device, r)
        del steps
        for i in impls:
            mem = (
                common.peak_memory("benchmarks.scaling:build", dict(impl=i, size=m, device=device, bf16=bf16, toy=toy))
                if memory
                else {}
            )
            rows.append(
                {
                    "impl": i,
                    "size": m,
                    **{k: round(v, 5) for k, v in times[i].items()},
                    "peak_bytes": mem.get("peak_bytes"),
                    "memory_error": mem.get("error"),
                }
            )
            print(f"M={m} {i}: {times[i]['step_s']:.3f} s/step, {common.fmt_bytes(mem.get('peak_bytes'))}", flush=True)
        if "transformer" in impls:
            last_transformer = (m, times["transformer"]["step_s"])
        else:
            rows.append({"impl": "transformer", "size": m, "skipped": skip})
            print(f"M={m} transformer: skipped ({skip})", flush=True)
    fits = {}
    for i in ("perceiver", "transformer"):
        rs = [r for r in rows if r["impl"] == i and "step_s" in r]
        fits[i] = {
            "time_slope": slope([r["size"] for r in rs], [r["step_s"] for r in rs]),
            "cpu_time_slope": slope([r["size"] for r in rs], [r["cpu_s"] for r in rs]),
            "memory_slope": slope([r["size"] for r in rs], [r["peak_bytes"] for r in rs]),
            "sizes": [r["size"] for r in rs],
        }
    return {
        "env": common.environment(device),
        "bf16": bf16,
        "model": cfg,
        "rounds": rounds,
        "rows": rows,
        "fits": fits,
        "caps": {"max_transformer_gib": max_gib, "max_transformer_step_s": max_step_s},
    }


def markdown(result: dict[str, Any]) -> str:
    env, cfg = result["env"], result["model"]
    lines = [
        f"# Scaling in input size ({env['time_utc']} UTC, {env['device']}, load {env['load_avg'][0]:.1f})",
        "",
        f"Perceiver: {cfg['latents']} x {cfg['width']} latents, 1 cross-attend + {cfg['self_attends']} "
        f"self-attends; Transformer: width {cfg['width']}, {cfg['heads']} heads, {1 + cfg['self_attends']} "
        f"layers over all inputs; batch {cfg['batch']}; median of {result['rounds']} interleaved rounds.",
        "",
        "| M inputs | Perceiver step s (CPU s) | Perceiver memory | Transformer step s (CPU s) | Transformer memory |",
        "|---|---|---|---|---|",
    ]
    by = {(r["impl"], r["size"]): r for r in result["rows"]}
    for m in sorted({r["size"] for r in result["rows"]}):
        p, t = by.get(("perceiver", m), {}), by.get(("transformer", m), {})
        tt = f"{t['step_s']:.4f} ({t['cpu_s']:.4f})" if "step_s" in t else f"skipped: {t.get('skipped')}"
        tm = common.fmt_bytes(t.get("peak_bytes")) if "step_s" in t else "-"
        lines.append(
            f"| {m:,} | {p['step_s']:.4f} ({p['cpu_s']:.4f}) | {common.fmt_bytes(p.get('peak_bytes'))} | {tt} | {tm} |"
        )
    lines.append("")
    for i, f in result["fits"].items():
        ts = "-" if f["time_slope"] is None else f"{f['time_slope']:.2f}"
        ms = "-" if f["memory_slope"] is None else f"{f['memory_slope']:.2f}"
        cs = "-" if f.get("cpu_time_slope") is None else f"{f['cpu_time_slope']:.2f}"
        lines.append(f"- {i}: log-log slope time {ts} (CPU time {cs}), memory {ms} (over M = {f['sizes']})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None)
    p.add_argument("--max-transformer-gib", type=float, default=4.0)
    p.add_argument("--max-transformer-step-s", type=float, default=60.0)
    args = p.parse_args(argv)
    common.setup(args)
    sizes = args.sizes or ([64, 256] if args.toy else [1024, 4096, 16384] if args.quick else [1024, 4096, 16384, 65536])
    rounds = args.rounds or (2 if args.toy else 3)
    result = run(
        sizes,
        args.device,
        args.bf16,
        rounds,
        args.toy,
        args.max_transformer_gib,
        args.max_transformer_step_s,
        memory=not args.no_memory,
    )
    return common.publish(args, "scaling", result, markdown(result))


if __name__ == "__main__":
    main()
