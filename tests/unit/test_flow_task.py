"""OpticalFlow (issue 17): metrics exact on hand-made cases, the Middlebury colour wheel, the loss and its masking,
training on a random subset of pixels, and the files `predict` writes. In-memory batches with the data module's
layout; the CLI runs are in tests/integration/test_flow_cli.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from perceiver_lit.callbacks.flow_images import flow_panel
from perceiver_lit.flow_viz import flow_to_color, make_colorwheel, save_flow_png
from perceiver_lit.models import FlowPatchAdapter, PerceiverIOFlow
from perceiver_lit.tasks import OpticalFlow
from perceiver_lit.tasks.flow_metrics import EndPointError, FlOutliers

H, W = 8, 12


def tiny_flow_net(h: int = H, w: int = W) -> PerceiverIOFlow:
    torch.manual_seed(0)
    return PerceiverIOFlow(
        FlowPatchAdapter((2, h, w, 3), num_channels=8, num_frequency_bands=3),
        num_latents=8,
        latent_dim=16,
        num_self_attends=1,
        num_self_attention_heads=2,
        decode_chunk_size=17,
    )


def batch(b: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "inputs": torch.rand(b, 2, H, W, 3, generator=g) * 2 - 1,
        "target": torch.randn(b, H, W, 2, generator=g) * 4,
        "valid": torch.rand(b, H, W, generator=g) > 0.25,
        "key": [f"s{i}" for i in range(b)],
    }


# ------------------------------------------------------------------------------------------------------ metrics
def hand_case():
    """Five pixels: errors 5 (3-4-5), 0, 4, 2 and an invalid one (error 1000, NaN target)."""
    target = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [100.0, 0.0], [0.0, 10.0], [float("nan"), 0.0]]])  # (1, 5, 2)
    pred = torch.tensor([[[3.0, 4.0], [1.0, 1.0], [104.0, 0.0], [0.0, 12.0], [1000.0, 0.0]]])
    valid = torch.tensor([[True, True, True, True, False]])
    return pred, target, valid


def test_epe_is_the_mean_over_valid_pixels_only():
    pred, target, valid = hand_case()
    m = EndPointError()
    m.update(pred, target, valid)
    assert m.compute().item() == pytest.approx((5 + 0 + 4 + 2) / 4, abs=1e-12)
    # pixel 0 masked out too: the NaN target and the huge error never count
    m2 = EndPointError()
    m2.update(pred, target, valid & torch.tensor([[False, True, True, True, True]]))
    assert m2.compute().item() == pytest.approx(6 / 3, abs=1e-12)


def test_fl_is_kittis_definition_over_3px_and_over_5_percent():
    pred, target, valid = hand_case()
    m = FlOutliers()
    m.update(pred, target, valid)
    # pixel 0: err 5 > 3 and > 5% of |0| -> outlier; pixel 2: err 4 > 3 but < 5% of 100 = 5 -> not;
    # pixel 3: err 2 < 3 -> not; pixel 1: 0 -> not; pixel 4 invalid.
    assert m.compute().item() == pytest.approx(1 / 4, abs=1e-12)
    plain = FlOutliers(rel_thresh=0.0)  # only "> 3 px": pixel 2 counts too
    plain.update(pred, target, valid)
    assert plain.compute().item() == pytest.approx(2 / 4, abs=1e-12)
    # exactly at the thresholds: not outliers (KITTI's strict >)
    edge = FlOutliers()
    edge.update(torch.tensor([[3.0, 0.0], [63.0, 0.0]]), torch.tensor([[0.0, 0.0], [60.0, 0.0]]))
    assert edge.compute().item() == 0.0


def test_metric_states_are_sums_so_split_batches_and_ranks_add_up_exactly():
    pred, target, valid = batch(4)["target"] * 0.5, batch(4)["target"], batch(4)["valid"]
    whole, parts = (EndPointError(), FlOutliers()), (EndPointError(), FlOutliers())
    for m in whole:
        m.update(pred, target, valid)
    for m in parts:
        m.update(pred[:1], target[:1], valid[:1])
        m.update(pred[1:], target[1:], valid[1:])
    for a, b in zip(whole, parts):
        assert a.compute().item() == pytest.approx(b.compute().item(), abs=1e-12)
    # the reduction DDP applies is "sum" for every state
    assert all(fx is torch.sum or getattr(fx, "__name__", "") == "dim_zero_sum" for fx in whole[0]._reductions.values())


def test_metrics_without_a_valid_pixel_are_nan():
    m = EndPointError()
    m.update(torch.zeros(1, 2, 2), torch.ones(1, 2, 2), torch.zeros(1, 2, dtype=torch.bool))
    assert math.isnan(m.compute().item())


# ------------------------------------------------------------------------------------------------- colour wheel
def test_colour_wheel_is_middleburys():
    wheel = make_colorwheel()
    assert wheel.shape == (55, 3)
    # the segment starts: red, yellow, green, cyan, blue, magenta
    for i, rgb in zip(
        (0, 15, 21, 25, 36, 49), ((255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255), (255, 0, 255))
    ):
        assert tuple(wheel[i].astype(int)) == rgb
    flow = np.array([[[1, 0], [0, 1], [-1, 0], [0, -1], [0, 0], [0.5, 0]]], float)
    rgb = flow_to_color(flow).tolist()[0]
    # right red, down yellow, left cyan-blue, up blue-violet; no motion white; half length half saturated
    assert rgb == [[255, 0, 0], [255, 229, 0], [0, 209, 255], [88, 0, 255], [255, 255, 255], [255, 127, 127]]


def test_colour_wheel_masks_invalid_and_scales_to_max_flow():
    flow = np.array([[[2.0, 0.0], [np.nan, 0.0], [1.0, 0.0]]])
    rgb = flow_to_color(flow, valid=np.array([[True, True, False]]))
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, 1].tolist() == [0, 0, 0] and rgb[0, 2].tolist() == [0, 0, 0]
    # with max_flow 4, length 2 is half saturated; beyond max_flow the colour darkens (x 0.75)
    assert flow_to_color(flow[:, :1], max_flow=4.0)[0, 0].tolist() == [255, 127, 127]
    assert flow_to_color(flow[:, :1], max_flow=1.0)[0, 0].tolist() == [191, 0, 0]


def test_flow_panel_shows_frames_truth_and_prediction_side_by_side():
    b = batch(1)
    strip = flow_panel(
        b["inputs"][0].numpy(), b["target"][0].numpy(), b["target"][0].numpy() * 0, b["valid"][0].numpy()
    )
    k = -(-128 // H)  # enlarged to >= 128 px high
    assert strip.shape == (H * k, (4 * W + 3 * 2) * k, 3) and strip.dtype == np.uint8
    # the predicted (zero) flow is white, the true flow is not
    assert (strip[:, -W * k :] == 255).all() and not (strip[:, 2 * (W + 2) * k : (3 * W + 4) * k] == 255).all()


# ------------------------------------------------------------------------------------------------------- the task
def test_loss_ignores_invalid_pixels_whatever_their_flow():
    task = OpticalFlow(tiny_flow_net(), lr=1e-3)
    b = batch()
    loss = task.shared_step(b, "val", 0)
    b2 = dict(b, target=torch.where(b["valid"][..., None], b["target"], torch.full_like(b["target"], float("nan"))))
    assert torch.isfinite(task.shared_step(b2, "val", 0))
    assert task.shared_step(b2, "val", 0).item() == pytest.approx(loss.item(), rel=1e-6)
    # L1 in units of pixels / flow_scale: a prediction that is off by (3, 4) px everywhere gives 7 / 20
    task.predict_flow = lambda frames: b["target"] + torch.tensor([3.0, 4.0])
    assert task.shared_step(b, "val", 0).item() == pytest.approx(7 / 20, rel=1e-5)
    epe = OpticalFlow(tiny_flow_net(), loss="epe")
    epe.predict_flow = task.predict_flow
    assert epe.shared_step(b, "val", 0).item() == pytest.approx(5 / 20, rel=1e-5)


def test_training_decodes_a_random_subset_and_eval_every_pixel():
    net = tiny_flow_net()
    seen = []
    net.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((kwargs.get("query_indices"), out.shape)), with_kwargs=True
    )
    task = OpticalFlow(net, train_queries=0.25)
    task.train()
    loss = task.shared_step(batch(), "train", 0)
    idx, shape = seen[-1]
    assert idx.shape == (2, H * W // 4) and shape == (2, H * W // 4, 2)
    loss.backward()
    assert net.decoder.head.weight.grad is not None and net.adapter.patch_proj.weight.grad.abs().sum() > 0
    task.eval()
    with torch.no_grad():
        out = task.validation_step(batch(), 0)
    assert seen[-1][0] is None and out["flow"].shape == (2, H, W, 2)
    assert OpticalFlow(tiny_flow_net(), train_queries=40)._num_train_queries(H * W) == 40
    assert OpticalFlow(tiny_flow_net(), train_queries=1.0)._num_train_queries(H * W) is None  # all: one pass


def test_subset_loss_equals_the_full_decode_restricted_to_the_same_pixels():
    task = OpticalFlow(tiny_flow_net(), train_queries=30)
    task.train()
    b = batch()
    torch.manual_seed(5)
    sub = task.shared_step(b, "train", 0)
    torch.manual_seed(5)
    from perceiver_lit.models.decoders import random_query_indices, take_rows

    idx = random_query_indices(H * W, 30, 2)
    full = task.net(b["inputs"]).float() * task.flow_scale  # (B, H, W, 2)
    expect = task._loss(
        take_rows(full.flatten(1, 2), idx),
        take_rows(b["target"].flatten(1, 2), idx),
        take_rows(b["valid"].flatten(1, 2)[..., None], idx)[..., 0],
    )
    assert sub.item() == pytest.approx(expect.item(), rel=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"loss": "l2"}, "loss must be 'l1' or 'epe'"),
        ({"train_queries": 0}, "train_queries must be an int >= 1"),
        ({"train_queries": 1.5}, "train_queries must be an int >= 1"),
        ({"flow_scale": 0}, "flow_scale must be > 0"),
    ],
)
def test_bad_settings_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        OpticalFlow(tiny_flow_net(), **bad)


def test_estimate_residual_needs_the_flow_scale_to_be_the_rescale_factor():
    """The net adds its block-matching estimate in pixels before / rescale_factor; the task's flow_scale turns the
    output back into pixels, so the two must agree (the local recipe: 20 and 20)."""
    adapter = FlowPatchAdapter(
        (2, H, W, 3), num_channels=8, num_frequency_bands=3, correlation_radius=1, correlation_estimate=True
    )
    net = PerceiverIOFlow(adapter, num_latents=8, latent_dim=16, num_self_attends=1, estimate_residual=True)
    with pytest.raises(ValueError, match=r"rescale_factor \(100.0\) must equal model.init_args.flow_scale \(20"):
        OpticalFlow(net)
    net = PerceiverIOFlow(
        adapter, num_latents=8, latent_dim=16, num_self_attends=1, estimate_residual=True, rescale_factor=20.0
    )
    assert OpticalFlow(net, flow_scale=20.0).flow_scale == 20.0


def test_a_target_that_does_not_fit_the_frames_is_named():
    b = batch()
    b["target"] = b["target"][:, :-1]
    with pytest.raises(ValueError, match=r"batch\['target'\] must be \(B, H, W, 2\)"):
        OpticalFlow(tiny_flow_net()).shared_step(b, "val", 0)


def test_write_predictions_writes_npy_and_the_colour_wheel_png(tmp_path):
    task = OpticalFlow(tiny_flow_net())
    b = batch()
    b["key"] = ["seq/a", "b"]
    flow = torch.randn(2, H, W, 2)
    rows = task.write_predictions({"key": b["key"], "flow": flow}, b, str(tmp_path / "predictions"))
    assert [r["key"] for r in rows] == ["seq/a", "b"]
    for i, row in enumerate(rows):
        assert row["flow"] == f"predictions/flow/{['seq_a', 'b'][i]}.npy" and row["image"].endswith(".png")
        np.testing.assert_array_equal(np.load(tmp_path / row["flow"]), flow[i].numpy())
        png = np.asarray(Image.open(tmp_path / row["image"]))
        np.testing.assert_array_equal(png, flow_to_color(flow[i].numpy()))
        ok = b["valid"][i]
        assert row["epe"] == pytest.approx(float((flow[i] - b["target"][i]).norm(dim=-1)[ok].mean()), abs=1e-5)
    json.dumps(rows)


def test_save_flow_png_round_trips(tmp_path):
    flow = np.random.default_rng(0).normal(size=(5, 7, 2))
    save_flow_png(flow, tmp_path / "f.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "f.png")), flow_to_color(flow))


def test_the_cli_links_input_shape_but_no_class_count_into_a_flow_task():
    from perceiver_lit.cli_links import ADAPTER, NET, plan_links

    tree = {
        "model": {
            "class_path": "perceiver_lit.tasks.OpticalFlow",
            "init_args": {
                "net": {
                    "class_path": "perceiver_lit.models.PerceiverIOFlow",
                    "init_args": {"adapter": {"class_path": "perceiver_lit.models.FlowPatchAdapter"}},
                }
            },
        }
    }
    links = plan_links(tree)
    assert ("input_shape", f"{ADAPTER}.init_args.input_shape") in links
    assert not [link for link in links if link[0] == "num_classes"], links
    # a converted net (the pretrained factory takes num_classes too): only the input shape, which retargets it
    tree["model"]["init_args"]["net"] = {"class_path": "perceiver_lit.models.pretrained", "init_args": {"path": "x"}}
    links = plan_links(tree)
    assert ("input_shape", f"{NET}.init_args.input_shape") in links
    assert not [link for link in links if link[0] == "num_classes"], links
