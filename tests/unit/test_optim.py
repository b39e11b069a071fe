"""LAMB against its update rule; schedule values at the papers' key steps; weight-decay groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from perceiver_lit.tasks.optim import Lamb, LRSchedule, build_optimizer, fused_adamw_allowed, param_groups
from tests.fixtures.training import TinyNet


def lamb_reference(w, grads, lr, b1, b2, eps, wd):
    """You et al. 2019, Algorithm 2, written out per step in float64."""
    w = w.clone().double()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
        u = r + wd * w
        wn, un = w.norm(), u.norm()
        trust = wn / un if wn > 0 and un > 0 else 1.0
        w = w - lr * trust * u
    return w


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lamb_matches_update_rule(wd):
    torch.manual_seed(0)
    w0 = torch.randn(7, 5, dtype=torch.float64)
    grads = [torch.randn(7, 5, dtype=torch.float64) for _ in range(4)]
    p = nn.Parameter(w0.clone())
    opt = Lamb([p], lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=wd)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = lamb_reference(w0, grads, 0.01, 0.9, 0.99, 1e-6, wd)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)


def test_lamb_trust_ratio_is_per_tensor_and_one_for_zero_weights():
    big = nn.Parameter(torch.full((4,), 100.0))
    zero = nn.Parameter(torch.zeros(4))
    opt = Lamb([big, zero], lr=0.1, weight_decay=0.0)
    big.grad = torch.ones(4)
    zero.grad = torch.ones(4)
    opt.step()
    # First step: r = 1/(1+eps) per element, ||u|| = 2 (4 elements). zero: trust 1 -> moves by lr * 1.
    torch.testing.assert_close(zero.detach(), torch.full((4,), -0.1), rtol=1e-5, atol=1e-6)
    # big: trust = ||w|| / ||u|| = 200 / 2 = 100 -> moves by lr * 100 * 1 = 10 per element.
    torch.testing.assert_close(big.detach(), torch.full((4,), 90.0), rtol=1e-5, atol=1e-4)


def test_step_decay_perceiver_imagenet():
    spe = 10  # steps per epoch
    s = LRSchedule("step", decay_steps=[84 * spe, 102 * spe, 114 * spe], decay_factor=0.1)
    assert s(0) == 1.0
    assert s(84 * spe - 1) == 1.0
    assert s(84 * spe) == pytest.approx(0.1)
    assert s(102 * spe) == pytest.approx(0.01)
    assert s(114 * spe) == pytest.approx(0.001)
    assert s(120 * spe - 1) == pytest.approx(0.001)


def test_constant_then_cosine_perceiver_io():
    spe = 10
    s = LRSchedule("cosine", total_steps=110 * spe, flat_steps=55 * spe)
    assert s(0) == 1.0 and s(55 * spe - 1) == 1.0
    assert s(55 * spe) == pytest.approx(1.0)
    assert s(55 * spe + 55 * spe // 2) == pytest.approx(0.5, abs=1e-9)
    assert s(110 * spe) == pytest.approx(0.0, abs=1e-12)
    assert s(int(82.5 * spe) + 100) < 0.5


def test_warmup_multiplies_the_schedule():
    s = LRSchedule("cosine", total_steps=100, warmup_steps=10)
    assert s(0) == pytest.approx(0.1 * 1.0)
    assert s(4) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.04)))
    assert s(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert LRSchedule("constant", warmup_steps=4)(1) == pytest.approx(0.5)


def test_cosine_needs_total_steps():
    with pytest.raises(ValueError, match="total number of steps"):
        LRSchedule("cosine")


def test_weight_decay_groups_follow_no_weight_decay():
    net = TinyNet()
    groups = param_groups(net, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in net.named_parameters() if id(p) in decayed}
    assert names == {"embed.weight", "head.weight"}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_weight_decay_groups_fallback_without_no_weight_decay():
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    groups = param_groups(net, 0.05)
    decayed = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in net.named_parameters() if id(p) in decayed}
    assert names == {"0.weight", "2.weight"}  # biases and the norm's 1-D weight are exempt


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("lamb", Lamb)])
def test_build_optimizer_keeps_groups(name, cls):
    opt = build_optimizer(name, TinyNet(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8)
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_build_optimizer_rejects_unknown():
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer("sgd", TinyNet(), 1e-3, 0.0, (0.9, 0.999), 1e-8)


def test_fused_adamw_on_cpu_gives_the_same_update_and_keeps_the_groups():
    torch.manual_seed(0)
    nets = [TinyNet(), TinyNet()]
    nets[1].load_state_dict(nets[0].state_dict())
    plain = build_optimizer("adamw", nets[0], 1e-2, 0.1, (0.9, 0.999), 1e-8, fused=False)
    fused = build_optimizer("adamw", nets[1], 1e-2, 0.1, (0.9, 0.999), 1e-8, fused=True)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    assert [g["weight_decay"] for g in fused.param_groups] == [g["weight_decay"] for g in plain.param_groups]
    before = [p.detach().clone() for p in nets[0].parameters()]
    for _ in range(3):
        for net, opt in zip(nets, (plain, fused)):
            out = sum((p.sum() + p.pow(2).sum()) * (i + 1) for i, p in enumerate(net.parameters()))
            out.backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b)
    assert all((a != b).any() for a, b in zip(nets[0].parameters(), before))  # every tensor moved


def _plugin(precision: str):
    from lightning.pytorch.plugins.precision import HalfPrecision, MixedPrecision, Precision

    if precision.endswith("-mixed"):
        # 16-mixed: Lightning's plugin for CUDA (a GradScaler; on a CPU-only torch it is built disabled, but set).
        return MixedPrecision(precision, "cuda" if precision == "16-mixed" else "cpu")
    return Precision() if precision == "32-true" else HalfPrecision(precision)


@pytest.mark.parametrize(
    ("precision", "clip", "fused"),
    [
        ("32-true", None, True),
        ("32-true", 1.0, True),  # the quickstart: fused, as before
        ("bf16-true", 1.0, True),
        ("16-true", 1.0, True),  # no AMP: Lightning clips like fp32
        ("bf16-mixed", None, True),
        ("bf16-mixed", 0.0, True),  # AMP without clipping: fused is accepted
        ("bf16-mixed", 1.0, False),  # every shipped bf16 preset + recipe (issue 19)
        ("16-mixed", None, False),
        ("16-mixed", 1.0, False),  # a scaler must unscale before GradNorm / clipping
    ],
)
def test_fused_adamw_only_where_lightnings_precision_plugin_accepts_it(precision, clip, fused):
    """The task fuses AdamW only where Lightning's precision plugin will clip and step it; the plugin's own
    clip_gradients (what trainer.gradient_clip_val calls) must accept the optimizer that is built."""
    plugin = _plugin(precision)
    assert fused_adamw_allowed(plugin, clip) is fused
    net = TinyNet()
    opt = build_optimizer("adamw", net, 1e-2, 0.1, (0.9, 0.999), 1e-8, fused=fused_adamw_allowed(plugin, clip))
    assert bool(opt.defaults["fused"]) is fused
    net(torch.randn(3, 4, 3)).sum().backward()
    plugin.clip_gradients(opt, clip or 0.0)  # raises RuntimeError for a fused AdamW under AMP with clipping


def test_lightning_refuses_clipping_a_fused_adamw_under_bf16_mixed():
    """The crash of issue 19, on the component: what `fused_adamw_allowed` avoids is real."""
    net = TinyNet()
    opt = build_optimizer("adamw", net, 1e-2, 0.1, (0.9, 0.999), 1e-8, fused=True)
    net(torch.randn(3, 4, 3)).sum().backward()
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        _plugin("bf16-mixed").clip_gradients(opt, 1.0)


def test_decay_embeddings_decays_latents_and_query_but_never_biases_or_norms():
    """DeepMind's ImageNet setting (decay_pos_embs=True): of the model's no_weight_decay() names, only the 1-D
    tensors (biases, norms) stay undecayed; the default spares the latent and query arrays too."""
    from perceiver_lit.models import perceiver_io_imagenet

    with torch.device("meta"):
        net = perceiver_io_imagenet()
    by_id = {id(p): n for n, p in net.named_parameters()}

    def undecayed(**kw) -> set[str]:
        groups = param_groups(net, 0.1, **kw)
        assert sum(len(g["params"]) for g in groups) == len(by_id)
        return {by_id[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}

    default, deepmind = undecayed(), undecayed(decay_embeddings=True)
    assert {"latents", "queries.queries"} <= default - deepmind
    assert deepmind == {n for n, p in net.named_parameters() if p.ndim < 2}
    assert any(n.endswith(".bias") for n in deepmind) and any("norm" in n for n in deepmind)
