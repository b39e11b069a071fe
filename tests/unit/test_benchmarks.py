"""Smoke tests of the benchmark suite at toy sizes: each script runs and writes its JSON and markdown, and the
summary folds them in. These check the machinery, not the figures."""

import json

import pytest
import torch

from benchmarks import common, mfu, peers, run, scaling, time_to_accuracy


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    base = ["--toy", "--rounds", "1", "--no-memory", "--out-dir", str(out)]
    return out, {"peers": peers.main(base), "scaling": scaling.main(base), "mfu": mfu.main(base)}


def test_peers_writes_matched_rows(results):
    out, res = results
    on_disk = json.loads((out / "peers.json").read_text())
    assert {(r["group"], r["impl"]) for r in on_disk["rows"]} == {
        ("perceiver", "ours"),
        ("perceiver", "lucidrains"),
        ("perceiver_io", "ours"),
        ("perceiver_io", "hf"),
    }
    for r in on_disk["rows"]:
        assert r["samples_per_s"] > 0 and r["params"] > 0
    assert "| toy | perceiver | ours |" in (out / "peers.md").read_text()


def test_peers_ceiling_row_is_our_model_on_16_inputs(tmp_path):
    """--ceiling times our model again on a 4 x 4 image (the latent side alone) next to the others; the summary
    judges only the real rows."""
    res = peers.main(
        ["--toy", "--rounds", "1", "--no-memory", "--out-dir", str(tmp_path), "--ceiling", "--groups", "perceiver"]
    )
    rows = {r["impl"]: r for r in res["rows"]}
    assert set(rows) == {"ours", "lucidrains", peers.CEILING_IMPL}
    assert rows[peers.CEILING_IMPL]["side"] == peers.CEILING_SIDE == 4 and rows["ours"]["side"] == 8
    assert rows[peers.CEILING_IMPL]["params"] == rows["ours"]["params"]  # the same model, fewer inputs
    for config in ("small", "imagenet"):  # its encoder keeps the full-size path: absorbed
        for group in peers.GROUPS:
            model = peers.build(group, "ours", config, side=peers.CEILING_SIDE).model
            layers = peers._encoder_cross_attends(model)
            assert layers and all(layer.absorb is True for layer in layers)
            layers[0].absorb = None  # left to choose by cost at 16 inputs, it would project them instead
            assert not layers[0].absorbs(peers.CONFIGS[config]["latents"], peers.CEILING_SIDE**2)
    assert "): ceiling |" in (tmp_path / "peers.md").read_text()
    judged = [line for line in run.headline(str(tmp_path)) if "train step" in line]
    assert len(judged) == 1 and "| train step vs lucidrains (perceiver, toy, cpu, fp32, " in judged[0]


def test_flop_bound_counts_the_latent_transformer_and_every_cross_attends_projection():
    """The Amdahl bound of the ratio: the peer's FLOPs over the latent Transformer's, by hand."""
    from perceiver_lit.models.attention import projected_cross_attention

    cfg = peers.CONFIGS["medium"]
    n, d, m = cfg["latents"], cfg["width"], cfg["side"] ** 2
    c = 3 + 2 * (2 * cfg["bands"] + 1)
    per_layer = 2 * n * d * (3 * d + 2 * n + d + 2 * d)  # qkv, QK^T + AV, output projection, MLP (widening 1)
    for group in peers.GROUPS:
        b = peers.flop_bound(group, "medium")
        assert b["latent_flops"] == cfg["blocks"] * cfg["layers"] * per_layer
        assert b["bound"] == b["peer_flops"] / b["latent_flops"] > 1
    # lucidrains projects k, v at each of its 4 weight-tied cross-attends; our shared model counts the shared
    # one's projection once: the peer count has two more (M x C x 2C multiply-adds each)
    ours = peers.build_model("perceiver", "ours", cfg)[0]
    with projected_cross_attention(ours):
        shared = ours.flops_per_sample()
    assert peers.flop_bound("perceiver", "medium")["peer_flops"] - shared == 2 * 2 * m * c * 2 * c


def test_peer_models_are_matched():
    """Same FLOPs-relevant shapes: lucidrains' cross-attention is C wide with the paper's MLP; HF's has no dropout
    and our Perceiver IO and HF's have the same number of parameters."""
    cfg = peers.CONFIGS["toy"]
    ours, _ = peers.build_model("perceiver_io", "ours", cfg)
    hf, _ = peers.build_model("perceiver_io", "hf", cfg)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in hf.modules())
    luc, _ = peers.build_model("perceiver", "lucidrains", cfg)
    c = 3 + 2 * (2 * cfg["bands"] + 1)
    attn = luc.layers[0].cross_attn.fn
    assert attn.to_kv.in_features == c and attn.to_q.out_features == c
    ff = luc.layers[0].self_attns[0][1].fn.net
    assert [type(m) for m in ff[:3]] == [torch.nn.Linear, torch.nn.GELU, torch.nn.Linear]
    assert ff[0].out_features == cfg["width"]
    import perceiver_pytorch.perceiver_pytorch as lp

    assert lp.FeedForward.__module__ == "perceiver_pytorch.perceiver_pytorch"  # the patch was undone


def test_scaling_fits_slopes(results):
    out, res = results
    assert {r["size"] for r in res["scaling"]["rows"]} == {64, 256}
    assert res["scaling"]["fits"]["perceiver"]["time_slope"] is not None
    assert json.loads((out / "scaling.json").read_text())["fits"] == res["scaling"]["fits"]


def test_scaling_skips_transformer_over_the_memory_cap(tmp_path):
    res = scaling.main(
        [
            "--toy",
            "--rounds",
            "1",
            "--no-memory",
            "--sizes",
            "64",
            "256",
            "--out-dir",
            str(tmp_path),
            "--max-transformer-gib",
            "1e-6",
        ]
    )
    skipped = [r for r in res["rows"] if r["impl"] == "transformer"]
    assert skipped and all("cap" in r["skipped"] for r in skipped)
    assert "skipped" in (tmp_path / "scaling.md").read_text()


def test_slope_of_a_power_law():
    assert scaling.slope([1, 2, 4, 8], [3, 12, 48, 192]) == pytest.approx(2.0)


def test_mfu_rows(results):
    _, res = results
    for r in res["mfu"]["rows"]:
        # a fraction of the same run's matmul rate: above 1 would mean the FLOP count or the timing is wrong
        assert r["flops_per_step"] > 0 and 0 < r["utilization"] <= 1
        assert r["utilization"] == round(r["achieved_flops_per_s"] / r["matmul_flops_per_s"], 4)
        # the toy encoders absorb their k/v projections: the textbook count is larger, the utilization with it too
        assert r["projected_flops_per_step"] > r["flops_per_step"]
        # (>=: both are rounded to 4 decimals, and a toy step on a loaded machine can round to the same value)
        assert r["utilization_projected_flops"] >= r["utilization"]


def test_projected_flops_count_leaves_the_layers_as_they_were():
    from perceiver_lit.models.attention import CrossAttentionLayer

    model = peers.build_model("perceiver", "ours", peers.CONFIGS["small"])[0]
    layers = [m for m in model.modules() if isinstance(m, CrossAttentionLayer)]
    layers[0].absorb = True
    executed = model.flops_per_sample()
    assert mfu.projected_flops_per_sample(model) > executed
    assert [layer.absorb for layer in layers] == [True, None] and model.flops_per_sample() == executed


def test_peak_memory_in_a_fresh_process():
    parent_ballast = torch.ones(2**26)  # 256 MiB here must not show up in the child's figure
    small = common.peak_memory("benchmarks.scaling:build", dict(impl="perceiver", size=64, toy=True), steps=1)
    assert "error" not in small, small
    assert 0 < small["peak_bytes"] < 64 * 2**20
    del parent_ballast


def test_summary_collects_every_result(results):
    out, _ = results
    (out / "time_to_accuracy.json").write_text(
        json.dumps(
            {
                "env": common.environment("cpu"),
                "extra_args": [],
                "returncode": 0,
                "wall_s": 500.0,
                "test_acc": 0.885,
                "fit_s": 400,
                "test_s": 60,
                "total_s": 470,
                "goal_acc": 0.88,
                "reached_goal": True,
            }
        )
    )
    text = run.summary(str(out))
    assert "| train step vs lucidrains (perceiver, toy, cpu, " in text and "[peers]" in text
    assert "Perceiver time slope" in text and "utilization perceiver toy (cpu" in text
    assert "quickstart test accuracy | >= 88% | 88.50%" in text
    assert "## Training step vs peers" in text  # each benchmark's own table, one level down


def test_parse_quickstart_log():
    log = "...\n│ test/acc1 │ 0.8812 │\n==> [10:00:00] done: test accuracy 0.8812 | fit 420 s, test 35 s, total 470 s\n"
    assert time_to_accuracy.parse_log(log) == {"fit_s": 420, "test_s": 35, "total_s": 470, "test_acc": 0.8812}
    assert time_to_accuracy.parse_log("test/acc1=88.5")["test_acc"] == pytest.approx(0.885)
    assert time_to_accuracy.parse_log("crashed") == {}


def test_cpu_math_backward_path_matches_sdpa_default(monkeypatch):
    """The optimisation found by the suite (sdpa.py: SDPA's math backend for CPU training with fewer
    batch x heads than threads) gives the same outputs and gradients as the default kernel."""
    from perceiver_lit.models import sdpa as A
    from perceiver_lit.models.attention import CrossAttentionLayer

    torch.manual_seed(0)
    layer = CrossAttentionLayer(16, 11)  # odd channels, like the ImageNet cross-attend's 261
    x, inp = torch.randn(1, 4, 16), torch.randn(1, 32, 11)
    grads = {}
    for use_math in (False, True):
        monkeypatch.setattr(A, "_cpu_math_backward", lambda q, bh, n, m=use_math: m)
        layer.zero_grad()
        out = layer(x, inp)
        out.square().sum().backward()
        grads[use_math] = (out.detach(), [p.grad.clone() for p in layer.parameters()])
    torch.testing.assert_close(grads[True][0], grads[False][0])
    for a, b in zip(grads[True][1], grads[False][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    monkeypatch.undo()
    threads = torch.get_num_threads()
    q = torch.zeros(1, requires_grad=True)
    cap = A.MATH_ATTENTION_MAX_BYTES  # bytes of attention matrix; the argument counts its elements
    assert A._cpu_math_backward(q, threads - 1, 1) and not A._cpu_math_backward(q, threads, 1)
    assert not A._cpu_math_backward(q, threads - 1, cap // 4 + 1)  # fp32: capped too
    with torch.no_grad():
        assert not A._cpu_math_backward(q, 0, 1)
    # bf16 / fp16: the math backend at any batch x heads, up to MATH_ATTENTION_MAX_BYTES of bf16 matrix
    qb = torch.zeros(1, dtype=torch.bfloat16, requires_grad=True)
    assert A._cpu_math_backward(qb, threads, cap // 2) and not A._cpu_math_backward(qb, threads, cap // 2 + 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert A._cpu_math_backward(q, threads, cap // 2)  # fp32 q that autocast will cast to bf16


def test_fp32_and_bf16_flags_exclude_each_other():
    args = common.base_parser("x").parse_args(["--fp32", "--bf16"])
    with pytest.raises(SystemExit, match="exclude each other"):
        common.setup(args)
