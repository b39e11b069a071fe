"""Dense-output models (issue 17) against HF's own: optical flow and multimodal autoencoding, forward throughput at
the official shapes and a training step at a reduced size, interleaved in one process; peak memory of each entry in
a fresh process; the two outputs compared (parity) on the timed batch.

    python -m benchmarks.dense                       # official shapes (flow 368 x 496, the 16 x 224 x 224 clip)
    python -m benchmarks.dense --cases flow_forward  # one row on its own
    python -m benchmarks.dense --toy                 # tiny shapes: a smoke test of the script

Entries: `hf` is transformers' PerceiverForOpticalFlow / PerceiverForMultimodalAutoencoding (HF's init, attention
dropout 0; eval mode for the forwards); `ours` is `perceiver_lit.convert.from_huggingface` of that very model in the
timed process, so both compute the same function and the rows report how far apart the outputs are. In the memory
processes `ours` is the architecture the converter maps HF's config to, randomly initialised (only the entry's own
model takes memory there).

- Flow forward: the official model (2048 x 512 latents, 24 self-attends, 322 input channels) on one 368 x 496 frame
  pair. HF takes its patch layout (B, 2, 27, H, W) (`extract_patches`, made once, outside the timing); ours the
  frames (B, 2, H, W, 3). Every pixel's flow is decoded.
- Autoencoding forward: the official model on its official clip: 16 frames of 224 x 224, 30,720 audio samples, a
  700-class label. Every output is decoded: HF in one call with all 802,816 pixel and 1,920 audio queries as its
  `subsampled_output_points` (HF's documentation decodes the clip in 128 calls, each rerunning the encoder; one call
  is its fastest way, at an estimated ~17 GiB; `--hf-calls N` splits it where that does not fit, and the row says
  so); ours in its eval decode (chunks of `decode_chunk_size` queries).
- Training steps (reduced size, official widths): flow on 92 x 124 frames, autoencoding on 4 frames of 64 x 64
  (7,680 samples); forward, mean-squared outputs as the loss, backward, AdamW (fused); every output decoded by both
  (HF cannot train on a subset of outputs; ours can, which the tasks use: not what is compared here).

Memory "above the model": the peak minus the model's own bytes (parameters for a forward; parameters, gradients and
AdamW's two moments for a training step). Goal (issue 17), for each forward: >= 2x HF's throughput, and at most 1/3
of HF's memory above the model.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks import common
from perceiver_lit.models.hf_names import HF_CONFIGS

# HF PerceiverConfig kwargs of the official models
FLOW, AE = HF_CONFIGS["optical_flow"], HF_CONFIGS["multimodal_autoencoding"]
FLOW_TOY = dict(FLOW, num_latents=8, d_latents=32, num_self_attends_per_block=2, num_self_attention_heads=4)
AE_TOY = dict(
    AE,
    num_latents=8,
    d_latents=32,
    d_model=405,
    num_self_attends_per_block=2,
    num_self_attention_heads=4,
    num_labels=5,
    audio_samples_per_frame=32,
    output_num_channels=16,
)
# case: (task, mode, shape); shape: flow (H, W); autoencoding (frames, side)
CASES = {
    "flow_forward": ("flow", "forward", (368, 496)),
    "autoencoding_forward": ("autoencoding", "forward", (16, 224)),
    "flow_train": ("flow", "train", (92, 124)),
    "autoencoding_train": ("autoencoding", "train", (4, 64)),
}
TOY_SHAPES = {"flow": (6, 8), "autoencoding": (2, 8)}


def preload() -> None:
    import transformers  # noqa: F401

    import perceiver_lit.convert  # noqa: F401


def hf_config(task: str, shape: tuple[int, int], toy: bool):
    import transformers

    if task == "flow":
        return transformers.PerceiverConfig(
            **(FLOW_TOY if toy else FLOW), train_size=list(shape), attention_probs_dropout_prob=0.0
        )
    frames, side = shape
    return transformers.PerceiverConfig(
        **(AE_TOY if toy else AE),
        num_frames=frames,
        image_size=side,
        output_shape=[1, frames, side, side],
        attention_probs_dropout_prob=0.0,
    )


def hf_model(task: str, shape: tuple[int, int], toy: bool, device: str = "meta") -> torch.nn.Module:
    import transformers

    cls = transformers.PerceiverForOpticalFlow if task == "flow" else transformers.PerceiverForMultimodalAutoencoding
    torch.manual_seed(0)
    with torch.device(device):
        return cls(hf_config(task, shape, toy))


def inputs(task: str, shape: tuple[int, int], batch: int, toy: bool, hf_calls: int = 1) -> dict[str, Any]:
    """The same batch in each model's layout: {"hf": [kwargs of each of HF's forward calls], "ours": our model's
    input}. hf_calls > 1 (autoencoding): HF decodes the outputs in that many calls, as its documentation does."""
    from perceiver_lit.models import extract_patches

    g = torch.Generator().manual_seed(1)
    if task == "flow":
        frames = torch.rand(batch, 2, *shape, 3, generator=g)  # (B, 2, H, W, 3)
        return {"hf": [{"inputs": extract_patches(frames)}], "ours": frames}
    frames, side = shape
    cfg = hf_config(task, shape, toy)
    video = torch.rand(batch, frames, side, side, 3, generator=g)  # (B, T, H, W, 3)
    audio = torch.rand(batch, frames * cfg.audio_samples_per_frame, generator=g) * 2 - 1
    label = torch.nn.functional.one_hot(torch.arange(batch) % cfg.num_labels, cfg.num_labels).float()
    pixels = torch.arange(frames * side * side).tensor_split(hf_calls)
    patches = torch.arange(frames * cfg.audio_samples_per_frame // cfg.samples_per_patch).tensor_split(hf_calls)
    hf_in = {"image": video.permute(0, 1, 4, 2, 3).contiguous(), "audio": audio[..., None], "label": label}
    hf = [
        {"inputs": hf_in, "subsampled_output_points": {"image": p, "audio": a, "label": None}}
        for p, a in zip(pixels, patches)
    ]
    return {"hf": hf, "ours": {"video": video, "audio": audio, "label": label}}


def _outputs(task: str, impl: str, out: Any, batch: int) -> list[torch.Tensor]:
    """The outputs as a list of (B, -1) tensors, in the same order for both implementations."""
    if impl == "hf":
        if task == "flow":
            return [out[0].logits.reshape(batch, -1)]
        # one or more calls, each with a share of the pixel and audio queries; the label from the first
        return [torch.cat([o.logits[k].reshape(batch, -1) for o in out], 1) for k in ("image", "audio")] + [
            out[0].logits["label"].reshape(batch, -1)
        ]
    if task == "flow":
        return [out.reshape(batch, -1)]
    return [out[k].reshape(batch, -1) for k in ("video", "audio", "label")]


def _step(
    task: str,
    impl: str,
    mode: str,
    model: torch.nn.Module,
    x: dict[str, Any],
    batch: int,
    device: str,
    bf16: bool,
    keep: dict[str, Any] | None = None,
) -> common.Step:
    """A Step of `model` on x: an inference forward, or forward + mean-squared outputs + backward + AdamW."""
    model = model.to(device)
    params = sum(p.numel() for p in model.parameters())

    def forward() -> list[torch.Tensor]:
        out = [model(**kw) for kw in x["hf"]] if impl == "hf" else model(x["ours"])
        return _outputs(task, impl, out, batch)

    if mode == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

        def run() -> None:
            with common.autocast(device, bf16):
                outs = forward()
            loss = sum(o.float().square().mean() for o in outs)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return common.Step(run, batch, params, model)
    model.eval()

    def run() -> None:
        with torch.inference_mode(), common.autocast(device, bf16):
            outs = forward()
        if keep is not None:
            keep[impl] = outs

    return common.Step(run, batch, params, model)


def _ours_from_hf_config(task: str, shape: tuple[int, int], toy: bool) -> torch.nn.Module:
    """Our model with the architecture `from_huggingface` maps HF's config to, randomly initialised."""
    from perceiver_lit.convert import DENSE_CONVERTERS, build_from_spec

    meta = hf_model(task, shape, toy)
    spec, _ = DENSE_CONVERTERS[type(meta).__name__](meta, None)
    torch.manual_seed(0)
    return build_from_spec(spec)


def build(
    task: str,
    impl: str,
    mode: str,
    shape: list[int],
    batch: int = 1,
    toy: bool = False,
    device: str = "cpu",
    bf16: bool = False,
    hf_calls: int = 1,
) -> common.Step:
    """The memory probe's entry: a Step of HF's model or ours alone (see the module docstring)."""
    shape = tuple(shape)
    model = hf_model(task, shape, toy, "cpu") if impl == "hf" else _ours_from_hf_config(task, shape, toy)
    x = inputs(task, shape, batch, toy, hf_calls)
    return _step(task, impl, mode, model, x, batch, device, bf16)


def model_bytes(params: int, mode: str) -> int:
    """The model's own memory in fp32: parameters (forward); + gradients and AdamW's two moments (training)."""
    return params * 4 * (4 if mode == "train" else 1)


def parity(ref: list[torch.Tensor], out: list[torch.Tensor]) -> dict[str, float]:
    """Largest absolute difference of our outputs from HF's, and HF's largest absolute output (its scale)."""
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ref, out))
    return {"max_abs_diff": diff, "hf_max_abs": max(float(a.abs().max()) for a in ref)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from perceiver_lit.convert import from_huggingface

    rounds = args.rounds or (1 if args.toy else 3)
    rows = []
    for case in args.cases:
        task, mode, shape = CASES[case]
        shape = TOY_SHAPES[task] if args.toy else tuple(args.shape or shape)
        batch = args.batch
        hf_calls = args.hf_calls if case == "autoencoding_forward" else 1
        hf = hf_model(task, shape, args.toy, "cpu").eval()
        ours = from_huggingface(hf)  # the same weights: the same function
        x = inputs(task, shape, batch, args.toy, hf_calls)
        keep: dict[str, Any] = {}
        steps = {
            impl: _step(task, impl, mode, m, x, batch, args.device, args.bf16, keep)
            for impl, m in (("hf", hf), ("ours", ours))
        }
        timed = common.time_interleaved(steps, args.device, rounds, warmup=args.warmup)
        row = {
            "case": case,
            "task": task,
            "mode": mode,
            "shape": list(shape),
            "batch": batch,
            "hf_calls": hf_calls,
            "params": steps["ours"].params,
            **{f"{i}_{k}": v for i in timed for k, v in timed[i].items()},
        }
        assert steps["hf"].params == steps["ours"].params, "converted model: parameter counts differ"
        row["speedup"] = timed["hf"]["step_s"] / timed["ours"]["step_s"]
        row["cpu_speedup"] = timed["hf"]["cpu_s"] / timed["ours"]["cpu_s"]
        if mode == "forward":
            row.update(parity(keep["hf"], keep["ours"]))
            row["parity_ok"] = row["max_abs_diff"] <= 1e-4 * max(1.0, row["hf_max_abs"])
        del steps, hf, ours, keep
        if not args.no_memory:
            kw = dict(
                task=task,
                mode=mode,
                shape=list(shape),
                batch=batch,
                toy=args.toy,
                device=args.device,
                bf16=args.bf16,
                hf_calls=hf_calls,
            )
            for impl in ("hf", "ours"):
                mem = common.peak_memory("benchmarks.dense:build", {**kw, "impl": impl}, steps=args.memory_steps)
                row[f"{impl}_peak_bytes"] = mem.get("peak_bytes")
                if "error" in mem:
                    row[f"{impl}_memory_error"] = mem["error"]
            if row["hf_peak_bytes"] and row["ours_peak_bytes"]:
                own = model_bytes(row["params"], mode)
                row["model_bytes"] = own
                row["memory_above_model_ratio"] = (row["ours_peak_bytes"] - own) / (row["hf_peak_bytes"] - own)
        rows.append(row)
        print(markdown_row(row), flush=True)
    return {
        "benchmark": "dense",
        "environment": common.environment(args.device),
        "bf16": args.bf16,
        "toy": args.toy,
        "rounds": rounds,
        "warmup": args.warmup,
        "rows": rows,
        "goal": "forwards: ours >= 2x HF's throughput and <= 1/3 of HF's peak memory above the model",
    }


def markdown_row(r: dict[str, Any]) -> str:
    shape = " x ".join(str(s) for s in r["shape"]) + (
        f" (HF: {r['hf_calls']} calls)" if r.get("hf_calls", 1) > 1 else ""
    )
    par = f"{r['max_abs_diff']:.1e} (of {r['hf_max_abs']:.1e})" if "max_abs_diff" in r else "-"
    ratio = r.get("memory_above_model_ratio")
    return (
        f"| {r['task']} | {r['mode']} | {shape} | {r['batch']} | {r['hf_step_s']:.2f} | {r['ours_step_s']:.2f} | "
        f"**{r['speedup']:.2f}x** ({r['cpu_speedup']:.2f}x CPU) | {common.fmt_bytes(r.get('hf_peak_bytes'))} | "
        f"{common.fmt_bytes(r.get('ours_peak_bytes'))} | {common.fmt_bytes(r.get('model_bytes'))} | "
        f"{'-' if ratio is None else f'**{ratio:.2f}**'} | {par} |"
    )


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"## Dense outputs: ours vs HF ({env['device']}, {env['threads']} threads, load "
        f"{env['load_avg'][0]:.1f}, median of {result['rounds']} interleaved rounds after {result['warmup']} "
        f"warm-up{', bf16' if result['bf16'] else ''}{', TOY' if result['toy'] else ''})",
        "",
        "Shape: flow (H, W), autoencoding (frames, side). Speed-up: HF's seconds a step over ours (wall; process "
        "CPU time in brackets). Memory ratio: (our peak - model) / (HF's peak - model); goal <= 0.33, speed-up "
        ">= 2x (forwards). Parity: max |ours - HF| on the timed batch (HF's largest |output|).",
        "",
        "| task | step | shape | batch | HF s | ours s | speed-up | HF peak | ours peak | model | memory ratio | "
        "parity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [markdown_row(r) for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--shape", type=int, nargs=2, default=None, help="override the cases' shape (H W, or frames side)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each entry first")
    p.add_argument("--memory-steps", type=int, default=1, help="steps in each peak-memory process")
    p.add_argument(
        "--hf-calls",
        type=int,
        default=1,
        help="autoencoding forward: HF decodes the clip in this many "
        "calls (each reruns its encoder, as HF's documentation does with 128); 1 (default) decodes all "
        "802,816 pixels at once: ~17 GiB (estimated)",
    )
    args = p.parse_args(argv)
    common.setup(args)
    result = run(args)
    return common.publish(args, "dense", result, markdown(result))


if __name__ == "__main__":
    main()
