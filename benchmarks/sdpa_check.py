"""Check that every attention of the models takes one of SDPA's fused kernels on the GPU, forward and backward.

    python -m benchmarks.sdpa_check --device cuda          # run by benchmarks/gpu_check.sh

Each model runs a training step (bf16 autocast) with SDPA restricted to its fused backends (flash, memory-efficient,
cuDNN): where a call would need the math backend (materialised attention, quadratic memory), SDPA raises "No
available kernel" and the check fails, naming the model. The models zero-pad head dims to a multiple of 8 on CUDA
for exactly this (perceiver_lit/models/sdpa.py). Shapes are the paper presets' attention shapes (heads,
channels) with fewer layers and small inputs, so the check takes seconds. On CPU the models use SDPA's math backend
in training on purpose (docs/models.md), so only `--device cuda` is a check.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def cases(device: str) -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    """name -> (model, one batch of inputs), the presets' attention shapes with 1 self-attention layer per block."""
    from perceiver_lit.models import presets

    g = torch.Generator().manual_seed(0)
    few = {"num_self_attends_per_block": 1}
    return {
        "perceiver_imagenet": (presets.perceiver_imagenet((32, 32, 3), **few), torch.randn(2, 32, 32, 3, generator=g)),
        "perceiver_io_imagenet": (
            presets.perceiver_io_imagenet((32, 32, 3), **few),
            torch.randn(2, 32, 32, 3, generator=g),
        ),
        "perceiver_io_language": (
            presets.perceiver_io_language((256,), **few),
            torch.randint(0, 262, (2, 256), generator=g),
        ),
        "perceiver_modelnet40": (presets.perceiver_modelnet40((512, 3), **few), torch.randn(2, 512, 3, generator=g)),
    }


def check(device: str) -> dict[str, str]:
    """{model: "fused" or the error}, one training step each under SDPA's fused backends only."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    out = {}
    for name, (net, x) in cases(device).items():
        net, x = net.to(device).train(), x.to(device)
        try:
            with sdpa_kernel(fused), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                net(x).float().square().mean().backward()
            out[name] = "fused"
        except RuntimeError as e:
            out[name] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        del net
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the check); cpu only exercises the script")
    p.add_argument("--out", type=Path, default=None, help="write {model: result} as JSON here")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    result = check(args.device)
    for name, status in result.items():
        print(f"{name}: {status}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "device": args.device,
                    "seconds": round(time.monotonic() - t0, 1),
                    "torch": torch.__version__,
                    "models": result,
                },
                indent=1,
            )
        )
    bad = [n for n, s in result.items() if s != "fused"]
    if bad:
        raise SystemExit(f"SDPA fell back from the fused kernels for: {', '.join(bad)}")


if __name__ == "__main__":
    main()
