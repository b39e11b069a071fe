"""Converted official models against HF's own: forward throughput of the three ImageNet models and a conv
fine-tuning step, interleaved in one process, and peak memory of each in a fresh process.

    python -m benchmarks.pretrained                  # real shapes (224 x 224, 8 x 6 latent blocks), random weights
    python -m benchmarks.pretrained --device cuda    # bf16 autocast on a GPU
    python -m benchmarks.pretrained --toy            # tiny shapes: a smoke test of the script
    python -m benchmarks.pretrained --only conv-step # one row (names: fourier, learned, conv, conv-step)

Entries: `hf` is transformers' PerceiverForImageClassification{Fourier,Learned,ConvProcessing} (eval mode for the
forward: HF's attention dropout is 0.1 by default); `ours` is the architecture `from_huggingface` maps it to
(random weights, like HF's: tests/unit/test_convert.py shows the converted weights give HF's logits). Forward:
inference mode, images (B, 3, 224, 224) for HF and channels-last for ours (each in its own layout, made once).
Fine-tuning: one AdamW step of the conv model (benchmarks/common.py's `make_step`: fused AdamW, the same settings
for both), with HF's attention-probability dropout off: the converted model has no dropout (convert.py), so both
sides compute the same function (HF's default of 0.1 would add a mask over every attention matrix to HF's side
only). Goal: >= 1.2x HF's throughput at no more memory.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks import common
from perceiver_lit.models.hf_names import HF_CONFIGS

FAMILIES = {
    "fourier": ("PerceiverForImageClassificationFourier", 261),
    "learned": ("PerceiverForImageClassificationLearned", 512),
    "conv": ("PerceiverForImageClassificationConvProcessing", 322),
}
REAL = HF_CONFIGS["vision"]
ROW_NAMES = {**{(f, "forward"): f for f in FAMILIES}, ("conv", "train"): "conv-step"}  # for --only
TOY = dict(
    num_latents=8,
    d_latents=32,
    num_blocks=2,
    num_self_attends_per_block=1,
    num_self_attention_heads=4,
    num_cross_attention_heads=1,
    num_labels=10,
    image_size=16,
)


def preload() -> None:
    import transformers  # noqa: F401

    import perceiver_lit.convert  # noqa: F401


def _model(family: str, impl: str, toy: bool, attention_dropout: float = 0.1) -> torch.nn.Module:
    """HF's model, or ours with the architecture `from_huggingface` maps it to (built from the spec of an HF model
    on the meta device: only the entry's own model ever takes memory; the weights are random either way)."""
    import transformers

    from perceiver_lit.convert import _hf_spec, build_from_spec

    cls, d_model = FAMILIES[family]
    config = transformers.PerceiverConfig(
        d_model=d_model, attention_probs_dropout_prob=attention_dropout, **(TOY if toy else REAL)
    )
    torch.manual_seed(0)
    if impl == "hf":
        return getattr(transformers, cls)(config)
    with torch.device("meta"):
        meta = getattr(transformers, cls)(config)
    return build_from_spec(_hf_spec(meta, None))


def build(
    family: str, impl: str, mode: str, batch: int, toy: bool = False, device: str = "cpu", bf16: bool = False
) -> common.Step:
    """A Step: `mode` "forward" (inference) or "train" (forward, backward, AdamW) of `impl` "hf" or "ours"."""
    model = _model(family, impl, toy, attention_dropout=0.0 if mode == "train" else 0.1).to(device)
    size = (TOY if toy else REAL)["image_size"]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    if impl == "ours":
        x = x.permute(0, 2, 3, 1).contiguous()  # channels-last, our layout

    def forward() -> torch.Tensor:
        return model(inputs=x).logits if impl == "hf" else model(x)

    if mode == "train":
        target = torch.zeros(batch, dtype=torch.long, device=device)
        return common.make_step(model, forward, target, device, bf16)
    model.eval()

    def run() -> None:
        with torch.inference_mode(), common.autocast(device, bf16):
            forward()

    return common.Step(run, batch, sum(p.numel() for p in model.parameters()), model)


def run(args: argparse.Namespace) -> dict[str, Any]:
    batch = args.batch or (2 if args.toy else 8 if args.device.startswith("cuda") else 1)
    rounds = args.rounds or (2 if args.toy else 3)
    cases = [(f, "forward") for f in FAMILIES] + [("conv", "train")]
    if args.only:
        cases = [c for c in cases if ROW_NAMES[c] in args.only]
    rows = []
    for family, mode in cases:  # one family at a time: two 50M-parameter models in memory, not eight
        kw = dict(family=family, mode=mode, batch=batch, toy=args.toy, device=args.device, bf16=args.bf16)
        steps = {impl: build(impl=impl, **kw) for impl in ("hf", "ours")}
        timed = common.time_interleaved(steps, args.device, rounds)
        row = {
            "family": family,
            "mode": mode,
            "batch": batch,
            **{f"{i}_{k}": v for i in timed for k, v in timed[i].items()},
        }
        row["speedup"] = timed["hf"]["step_s"] / timed["ours"]["step_s"]
        if not args.no_memory:
            for impl in ("hf", "ours"):
                row[f"{impl}_peak_bytes"] = common.peak_memory("benchmarks.pretrained:build", {**kw, "impl": impl}).get(
                    "peak_bytes"
                )
        rows.append(row)
        del steps
    return {
        "benchmark": "pretrained",
        "environment": common.environment(args.device),
        "bf16": args.bf16,
        "toy": args.toy,
        "rows": rows,
        "goal": "ours >= 1.2x HF's throughput at <= HF's memory, every row",
    }


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"## Pretrained: converted official models vs HF ({env['device']}, {env['threads']} threads, load "
        f"{env['load_avg'][0]:.1f}{', bf16' if result['bf16'] else ''}{', TOY' if result['toy'] else ''})",
        "",
        "| model | step | batch | HF samples/s | ours samples/s | speed-up | speed-up, CPU time | HF peak | "
        "ours peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:  # CPU time: process CPU seconds a step, less sensitive to other jobs on a shared machine
        lines.append(
            f"| {r['family']} | {r['mode']} | {r['batch']} | {r['hf_samples_per_s']:.3g} | "
            f"{r['ours_samples_per_s']:.3g} | {r['speedup']:.2f}x | {r['hf_cpu_s'] / r['ours_cpu_s']:.2f}x | "
            f"{common.fmt_bytes(r.get('hf_peak_bytes'))} | {common.fmt_bytes(r.get('ours_peak_bytes'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 1 on CPU, 8 on CUDA)")
    p.add_argument(
        "--only",
        nargs="+",
        choices=list(ROW_NAMES.values()),
        default=None,
        help="run only these rows (the result files then hold only them; --name keeps a full run's)",
    )
    args = p.parse_args(argv)
    common.setup(args)
    result = run(args)
    return common.publish(args, "pretrained", result, markdown(result))


if __name__ == "__main__":
    main()
