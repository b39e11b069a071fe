"""Inference throughput on CPU: eager PyTorch, torch.compile and onnxruntime, interleaved in one run.

    python -m benchmarks.inference                      # quickstart model + real-shape Perceiver IO (224 x 224)
    python -m benchmarks.inference --toy                # a smoke test of the script, not a measurement

Models: the quickstart's Perceiver (configs/quickstart.yaml's net on 28 x 28 x 1) and Perceiver IO at the ImageNet
shape (`perceiver_io_imagenet`, 48.4M parameters, 224 x 224 x 3), random weights (speed does not depend on them).
Each runtime runs the same net on the same batch under `torch.inference_mode` (eager, compile) or an
onnxruntime session built from `perceiver-lit-export`'s ONNX (Fourier features baked in as constants); the
runtimes take turns round by round (benchmarks/common.time_interleaved) and the median is reported. onnxruntime
uses as many intra-op threads as torch. Results: benchmarks/results/inference.{json,md}.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from benchmarks.common import Step, base_parser, environment, publish, setup, time_interleaved


def quickstart_net() -> torch.nn.Module:
    """configs/quickstart.yaml's net (input_keep only acts in training)."""
    from perceiver_lit.models import ImageAdapter, Perceiver

    return Perceiver(
        ImageAdapter((28, 28, 1), num_frequency_bands=6),
        num_classes=10,
        num_latents=32,
        latent_dim=64,
        num_cross_attends=1,
        num_cross_attention_heads=4,
        cross_attention_qk_channels=32,
        num_self_attends_per_block=2,
        num_self_attention_heads=4,
    )


def toy_io_net() -> torch.nn.Module:
    from perceiver_lit.models import ImageAdapter, PerceiverIO

    return PerceiverIO(
        ImageAdapter((16, 16, 3), num_frequency_bands=4),
        num_classes=10,
        num_latents=16,
        latent_dim=32,
        num_blocks=1,
        num_self_attends_per_block=1,
        num_self_attention_heads=2,
    )


MODELS: dict[str, tuple[Any, tuple[int, ...], int]] = {
    # name: (builder, input shape, batch)
    "quickstart": (quickstart_net, (28, 28, 1), 64),
    "perceiver_io_imagenet": (
        lambda: __import__("perceiver_lit.models", fromlist=["x"]).perceiver_io_imagenet(),
        (224, 224, 3),
        2,
    ),
}
TOY = {"quickstart": (quickstart_net, (28, 28, 1), 8), "perceiver_io_toy": (toy_io_net, (16, 16, 3), 4)}


def steps_for(
    name: str, net: torch.nn.Module, shape: tuple[int, ...], batch: int, tmp: str, threads: int
) -> dict[str, Step]:
    import onnxruntime as ort

    from perceiver_lit.export import save_onnx

    net = net.eval()
    x = torch.randn(batch, *shape)
    params = sum(p.numel() for p in net.parameters())
    compiled = torch.compile(net)
    path = save_onnx(net, (torch.randn(2, *shape),), os.path.join(tmp, f"{name}.onnx"))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}

    def eager() -> None:
        with torch.inference_mode():
            net(x)

    def compile_() -> None:
        with torch.inference_mode():
            compiled(x)

    def onnx() -> None:
        session.run(None, feed)

    return {
        f"{name}/eager": Step(eager, batch, params),
        f"{name}/torch.compile": Step(compile_, batch, params),
        f"{name}/onnxruntime": Step(onnx, batch, params),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    if args.device != "cpu":
        raise SystemExit("benchmarks.inference measures CPU runtimes (onnxruntime's CPU provider)")
    setup(args)
    threads = torch.get_num_threads()
    models = TOY if args.toy else MODELS
    rounds = args.rounds or (1 if args.toy else 5)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (build, shape, batch) in models.items():
            torch.manual_seed(0)
            steps = steps_for(name, build(), shape, batch, tmp, threads)
            timed = time_interleaved(steps, "cpu", rounds, warmup=2)  # warm-up 2: torch.compile compiles in the first
            for key, t in timed.items():
                model, runtime = key.split("/")
                rows.append(
                    {
                        "model": model,
                        "runtime": runtime,
                        "batch": batch,
                        "params": steps[key].params,
                        "samples_per_s": t["samples_per_s"],
                        "step_s": t["step_s"],
                        "spread": t["spread"],
                    }
                )
    result = {"env": environment("cpu"), "threads": threads, "rounds": rounds, "rows": rows}
    lines = [
        f"Inference on CPU ({threads} threads), median of {rounds} interleaved rounds, "
        "`python -m benchmarks.inference`",
        "",
        "| model | params | batch | runtime | samples/s | ms per batch | vs eager |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eager = next(e for e in rows if e["model"] == r["model"] and e["runtime"] == "eager")
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['runtime']} | {r['samples_per_s']:,.1f} | "
            f"{1000 * r['step_s']:,.1f} | {r['samples_per_s'] / eager['samples_per_s']:.2f}x |"
        )
    return publish(args, "inference", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
