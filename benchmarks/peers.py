"""Training step against peers at matched configs: samples/s and peak memory.

    python -m benchmarks.peers [--quick] [--device cuda] [--bf16] [--ceiling] [--configs small medium imagenet]

Two groups, each with the peers that can express that architecture exactly:
  perceiver     ours `Perceiver` vs lucidrains' `perceiver_pytorch.Perceiver`: n cross-attends, each followed by
                L latent self-attends, weights shared after the first block.
  perceiver_io  ours `PerceiverIO` vs transformers' `PerceiverModel` (image preprocessor "pixels" + Fourier,
                classification decoder: HF's PerceiverForImageClassificationFourier at any size): one cross-attend,
                a block of L self-attends applied B times with shared weights, one trainable decoder query.
HF has a single cross-attend, so it is no peer for the first group; lucidrains' PerceiverIO has no position
encoding and a different decoder, so it is left out of the second.

How each peer's knobs map onto one config (N latents, width D, self-attention heads h, input grid H x W x 3,
K Fourier bands, cross-attention width = the input channels C = 3 + 2 (2K + 1), as in the paper):
  lucidrains  num_latents=N, latent_dim=D, depth=n, self_per_cross_attn=L, num_freq_bands=K, max_freq=H (its top
              frequency is max_freq / 2, like ours), cross_heads=1, cross_dim_head=C (q/k/v width C, our "kv"
              shape), latent_heads=h, latent_dim_head=D / h, weight_tie_layers=True, dropout 0. Its feed-forward is
              a hard-coded GEGLU with 4x width (12 D^2 MACs per element against our 2 D^2 at widening 1); for a
              matched step we swap its FeedForward class for the paper's Linear-GELU-Linear at our widening while
              it is built. Its weight tying leaves the first whole block (cross + self) unshared; ours shares all
              latent blocks (the paper): same FLOPs, it has L more self-attention layers of parameters.
  HF          num_latents=N, d_latents=D, d_model=C, num_blocks=B, num_self_attends_per_block=L,
              num_self_attention_heads=h, num_cross_attention_heads=1, qk/v channels default (C for the cross-attend,
              D for self-attends), widening factors 1, attention_probs_dropout_prob=0 (its default 0.1 would add
              dropout work the paper does not have), Fourier kwargs num_bands=K, max_resolution=(H, W).
All models train (model.train(), no dropout anywhere), fp32 on CPU (bf16 autocast with --bf16), bf16 autocast on
CUDA; AdamW; the inputs are each model's native layout (ours channels-last, HF channels-first, lucidrains
channels-last). --ceiling adds our model on 16 inputs: see CEILING_SIDE.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import common  # noqa: E402

# name: image side, bands, latents N, width D, heads h, blocks (cross-attends for "perceiver"), self-attends L, batch
CONFIGS: dict[str, dict[str, int]] = {
    "toy": dict(side=8, bands=4, latents=8, width=32, heads=4, blocks=2, layers=1, batch=2),
    "small": dict(side=32, bands=16, latents=64, width=256, heads=8, blocks=2, layers=2, batch=16),
    "medium": dict(side=64, bands=32, latents=128, width=384, heads=8, blocks=4, layers=2, batch=4),
    # the paper's ImageNet shape: 224 x 224 (50,176 inputs, 261 channels), 512 x 1024 latents, 8 x 6 layers
    "imagenet": dict(side=224, bands=64, latents=512, width=1024, heads=8, blocks=8, layers=6, batch=1),
}
GROUPS = {"perceiver": ["ours", "lucidrains"], "perceiver_io": ["ours", "hf"]}


def _inputs(cfg: dict[str, int], device: str, channels_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s, b = cfg["side"], cfg["batch"]
    x = torch.randn(b, s, s, 3, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    if channels_first:
        x = x.permute(0, 3, 1, 2).contiguous()
    return x.to(device), y.to(device)


@contextlib.contextmanager
def _lucidrains_mlp_feedforward():
    """While lucidrains' model is built, its FeedForward is the paper's Linear-GELU-Linear (widening 1)."""
    import perceiver_pytorch.perceiver_pytorch as lp

    class FeedForward(nn.Module):
        def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.Dropout(dropout))

        def forward(self, x):
            return self.net(x)

    original, lp.FeedForward = lp.FeedForward, FeedForward
    try:
        yield
    finally:
        lp.FeedForward = original


def build_model(group: str, impl: str, cfg: dict[str, int], share_cross_attends: bool = True) -> tuple[nn.Module, bool]:
    """(model, channels_first input) for one peer at a config (share_cross_attends: our Perceiver's)."""
    from perceiver_lit.models import ImageAdapter, Perceiver, PerceiverIO

    s, k, n, d, h, blocks, layers = (cfg[x] for x in ("side", "bands", "latents", "width", "heads", "blocks", "layers"))
    c = 3 + 2 * (2 * k + 1)
    if impl == "ours":
        adapter = ImageAdapter((s, s, 3), num_frequency_bands=k, max_resolution=(s, s))
        if group == "perceiver":
            return Perceiver(
                adapter,
                num_classes=10,
                num_latents=n,
                latent_dim=d,
                num_cross_attends=blocks,
                num_self_attends_per_block=layers,
                num_self_attention_heads=h,
                share_cross_attends=share_cross_attends,
            ), False
        return PerceiverIO(
            adapter,
            num_classes=10,
            num_latents=n,
            latent_dim=d,
            num_blocks=blocks,
            num_self_attends_per_block=layers,
            num_self_attention_heads=h,
        ), False
    if impl == "lucidrains" and group == "perceiver":
        from perceiver_pytorch import Perceiver as LPerceiver

        with _lucidrains_mlp_feedforward():
            m = LPerceiver(
                input_channels=3,
                input_axis=2,
                num_freq_bands=k,
                max_freq=s,
                depth=blocks,
                num_latents=n,
                latent_dim=d,
                cross_heads=1,
                latent_heads=h,
                cross_dim_head=c,
                latent_dim_head=d // h,
                num_classes=10,
                attn_dropout=0.0,
                ff_dropout=0.0,
                weight_tie_layers=True,
                self_per_cross_attn=layers,
            )
        return m, False
    if impl == "hf" and group == "perceiver_io":
        import transformers
        from transformers.models.perceiver import modeling_perceiver as hp

        conf = transformers.PerceiverConfig(
            num_latents=n,
            d_latents=d,
            d_model=c,
            num_blocks=blocks,
            num_self_attends_per_block=layers,
            num_self_attention_heads=h,
            num_cross_attention_heads=1,
            attention_probs_dropout_prob=0.0,
            num_labels=10,
            image_size=s,
        )
        pre = hp.PerceiverImagePreprocessor(
            conf,
            prep_type="pixels",
            spatial_downsample=1,
            fourier_position_encoding_kwargs=dict(concat_pos=True, max_resolution=(s, s), num_bands=k, sine_only=False),
        )
        dec = hp.PerceiverClassificationDecoder(
            conf,
            num_channels=d,
            use_query_residual=True,
            trainable_position_encoding_kwargs=dict(num_channels=d, index_dims=1),
        )
        m = hp.PerceiverModel(conf, input_preprocessor=pre, decoder=dec)
        return m, True
    raise ValueError(f"peers: no peer {impl!r} in group {group!r} (groups: {GROUPS})")


def preload() -> None:
    """Import every peer's library (the memory probe calls this before its baseline)."""
    import perceiver_pytorch  # noqa: F401
    import transformers.models.perceiver.modeling_perceiver  # noqa: F401

    import perceiver_lit.models  # noqa: F401


# --ceiling: our model again with a 4 x 4 image (16 inputs, same channels), so that the input side costs next to
# nothing. Its encoder cross-attends are held on the path they take at full size (absorbed: at 16 inputs they would
# switch to projecting the inputs and skip the per-query work they do on the real image). Its step is the latent
# side alone (the latent Transformer, the cross-attends' query-side work, the head, the optimizer), the part in
# which every implementation does the same matmuls: the peer's step over it is the ratio we could reach if
# reading the inputs were free.
CEILING_IMPL, CEILING_SIDE = "ours, 16 inputs", 4


def flop_bound(group: str, config: str) -> dict[str, float]:
    """The ratio's bound by FLOPs (Amdahl), on any device: the peer's forward FLOPs a sample (the textbook count:
    k, v projected from every input at every cross-attend, as both peers run it, lucidrains' weight-tied ones
    too) over those of the latent Transformer alone (the self-attention blocks, which every implementation runs
    as the same matmuls). If the peer runs those matmuls as fast as we do, no work anywhere else can make our step
    faster than this ratio. Counted on our model at the config, built on the meta device (no memory, no init)."""
    from perceiver_lit.models.attention import projected_cross_attention

    cfg = CONFIGS[config]
    with torch.device("meta"):  # unshared cross-attends: each projects its k, v, as lucidrains' tied ones do
        model, _ = build_model(group, "ours", cfg, share_cross_attends=False)
    blocks = model.blocks if group == "perceiver" else model.processor
    latent = sum(blocks[b].flops(cfg["latents"]) for b in model._block_index)
    with projected_cross_attention(model):
        peer = model.flops_per_sample()
    return {"peer_flops": peer, "latent_flops": latent, "bound": peer / latent}


def _encoder_cross_attends(model: nn.Module) -> list[nn.Module]:
    return list(model.cross_attends) if hasattr(model, "cross_attends") else [model.encoder]


def build(
    group: str, impl: str, config: str, device: str = "cpu", bf16: bool = False, side: int | None = None
) -> common.Step:
    """A training step of one peer (also the memory probe's entry: benchmarks.peers:build); side: another
    image side than the config's."""
    cfg = CONFIGS[config] if side is None else dict(CONFIGS[config], side=side)
    torch.manual_seed(0)
    model, channels_first = build_model(group, impl, cfg)
    if side is not None and impl == "ours":  # the full-size path (see CEILING_SIDE)
        full_inputs = CONFIGS[config]["side"] ** 2
        for layer in _encoder_cross_attends(model):
            layer.absorb = layer.absorbs(cfg["latents"], full_inputs)
    model.to(device)
    x, y = _inputs(cfg, device, channels_first)
    if impl == "hf":
        forward = lambda: model(inputs=x).logits  # noqa: E731
    else:
        forward = lambda: model(x)  # noqa: E731
    return common.make_step(model, forward, y, device, bf16)


def run(
    configs: list[str],
    device: str,
    bf16: bool,
    rounds: int,
    memory: bool = True,
    groups: list[str] | None = None,
    short_imagenet: bool = True,
    ceiling: bool = False,
) -> dict[str, Any]:
    rows = []
    for config in configs:
        for group, impls in GROUPS.items():
            if groups and group not in groups:
                continue
            steps = {impl: build(group, impl, config, device, bf16) for impl in impls}
            if ceiling:
                steps[CEILING_IMPL] = build(group, "ours", config, device, bf16, side=CEILING_SIDE)
            params = {impl: st.params for impl, st in steps.items()}
            # the ImageNet shape takes up to minutes a step on a busy 2-core CPU: unless --rounds is given, one
            # round, no warm-up (its one-time costs are < 1% of such a step), and a one-step memory probe
            slow = short_imagenet and config == "imagenet" and device == "cpu"
            times = common.time_interleaved(steps, device, 1 if slow else rounds, warmup=0 if slow else 1)
            mem = {}
            for impl in impls:
                if memory:
                    mem[impl] = common.peak_memory(
                        "benchmarks.peers:build",
                        dict(group=group, impl=impl, config=config, device=device, bf16=bf16),
                        steps=1 if slow else 2,
                    )
            del steps
            bound = flop_bound(group, config)["bound"]
            peers = [i for i in impls if i != "ours"]
            fastest = max(peers, key=lambda i: times[i]["samples_per_s"])
            for impl in times:
                t, m = times[impl], mem.get(impl, {})
                side = {"side": CEILING_SIDE} if impl == CEILING_IMPL else {}
                rows.append(
                    {
                        "config": config,
                        "group": group,
                        "impl": impl,
                        **CONFIGS[config],
                        **side,
                        "params": params[impl],
                        **{k: round(v, 5) for k, v in t.items()},
                        "peak_bytes": m.get("peak_bytes"),
                        "memory_method": m.get("method"),
                        "memory_error": m.get("error"),
                        "speedup_vs_fastest_peer": round(t["samples_per_s"] / times[fastest]["samples_per_s"], 3),
                        "speedup_cpu_time": round(times[fastest]["cpu_s"] / t["cpu_s"], 3),
                        "fastest_peer": fastest,
                        "flop_bound": round(bound, 3),
                    }
                )
            print(
                *[
                    f"{r['config']}/{r['group']}/{r['impl']}: {r['samples_per_s']:.3g} samples/s, "
                    f"{common.fmt_bytes(r['peak_bytes'])}"
                    for r in rows[-len(times) :]
                ],
                sep="\n",
                flush=True,
            )
    return {"env": common.environment(device), "bf16": bf16, "rounds": rounds, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [
        f"# Training step vs peers ({env['time_utc']} UTC, {env['device']}"
        f"{' bf16' if result['bf16'] else ' fp32'}, {env['threads']} threads, load {env['load_avg'][0]:.1f})",
        "",
        f"Median of {sorted({r['rounds'] for r in result['rows']})} interleaved rounds (1, without warm-up, "
        "for the ImageNet shape on a CPU unless --rounds is given); memory: fresh process per model "
        "(see benchmarks/common.py). Ratio = our samples/s over the faster peer's."
        + (
            f' Row "{CEILING_IMPL}" (--ceiling): our model on a {CEILING_SIDE} x {CEILING_SIDE} image, the '
            "latent side alone; its ratio is the most any input-side work could give (see peers.py)."
            if any(r["impl"] == CEILING_IMPL for r in result["rows"])
            else ""
        ),
        "",
        ' Column "FLOP bound": the most our ratio can be on any device if the peer runs the latent '
        "Transformer's matmuls as fast as we do, its forward FLOPs over the latent Transformer's "
        "(`peers.flop_bound`).",
        "",
        "| config | group | impl | params | samples/s | step s (CPU s) | peak memory | vs fastest peer "
        "(by CPU time) | memory vs peer | FLOP bound |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = result["rows"]
    for r in rows:
        peer = next(
            (
                p
                for p in rows
                if p["config"] == r["config"] and p["group"] == r["group"] and p["impl"] == r["fastest_peer"]
            ),
            None,
        )
        memr = "-"
        if r["impl"] == "ours" and peer and r["peak_bytes"] and peer["peak_bytes"]:
            memr = f"{r['peak_bytes'] / peer['peak_bytes']:.2f}x"
        bound = f"{r['flop_bound']:.2f}x" if r["impl"] == "ours" and r.get("flop_bound") else "-"
        ratio = (
            f"**{r['speedup_vs_fastest_peer']:.2f}x** ({r['speedup_cpu_time']:.2f}x)"
            if r["impl"] == "ours"
            else f"{r['speedup_vs_fastest_peer']:.2f}x ({r['speedup_cpu_time']:.2f}x): ceiling"
            if r["impl"] == CEILING_IMPL
            else "-"
        )
        lines.append(
            f"| {r['config']} | {r['group']} | {r['impl']} | {r['params']:,} | {r['samples_per_s']:.3g} | "
            f"{r['step_s']:.3f} ({r['cpu_s']:.3f}) | "
            f"{common.fmt_bytes(r['peak_bytes']) if r['peak_bytes'] else r['memory_error'] or '-'} | "
            f"{ratio} | {memr} | {bound} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS))
    p.add_argument("--groups", nargs="+", default=None, choices=sorted(GROUPS))
    p.add_argument(
        "--ceiling",
        action="store_true",
        help=f"also time our model on a {CEILING_SIDE} x "
        f"{CEILING_SIDE} image: the latent side alone, the ceiling of the ratio (see peers.py)",
    )
    args = p.parse_args(argv)
    common.setup(args)
    rounds = args.rounds or (2 if args.toy else 5)
    result = run(
        common.model_configs(args),
        args.device,
        args.bf16,
        rounds,
        memory=not args.no_memory,
        groups=args.groups,
        short_imagenet=args.rounds is None,
        ceiling=args.ceiling,
    )
    return common.publish(args, "peers", result, markdown(result))


if __name__ == "__main__":
    main()
