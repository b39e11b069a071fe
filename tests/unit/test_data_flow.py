"""Optical flow data: the file formats (.flo, KITTI's 16-bit PNG), the four dataset layouts through
`perceiver-lit-shards flow` into shards and back out of FlowDataModule as batches, crops and flips that keep frames
and flow aligned, the synthetic generator's exact flow, and corrupt pairs skipped, counted and named."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.flow import FlowDataModule
from datamodules.shards import cli
from datamodules.shards.flow_synthetic import FlowGenerator, write_ppm
from datamodules.transforms import flow as F
from tests.fixtures.data import npy_bytes, write_tar

RNG = np.random.default_rng(0)


def frames_flow(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        rng.uniform(-20, 20, (h, w, 2)).astype(np.float32),
    )


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def eval_batches(urls: str, crop, split: str = "val", **kw) -> dict:
    """Every sample of `urls` read as eval (centred crop), concatenated, keyed by sample key."""
    dm = FlowDataModule(**{f"{split}_urls": urls}, crop_size=crop, batch_size=4, num_workers=0, **kw)
    dm.setup({"val": "validate", "test": "test", "predict": "predict"}[split])
    loader = {"val": dm.val_dataloader, "test": dm.test_dataloader, "predict": dm.predict_dataloader}[split]()
    out = {}
    for b in loader:
        for i, key in enumerate(b["key"]):
            out[key] = {k: b[k][i] for k in ("inputs", "target", "valid")}
    return out


def as_input(frame1: np.ndarray, frame2: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([frame1, frame2]).astype(np.float32) / 127.5 - 1)


# ------------------------------------------------------------------------------------------------- file formats
def test_flo_round_trip_and_wrong_magic_names_the_file(tmp_path):
    flow = RNG.normal(size=(5, 7, 2)).astype(np.float32)
    F.write_flo(tmp_path / "a.flo", flow)
    np.testing.assert_array_equal(F.read_flo(tmp_path / "a.flo"), flow)
    (tmp_path / "bad.flo").write_bytes(b"PIEX" + (tmp_path / "a.flo").read_bytes()[4:])
    with pytest.raises(ValueError, match=r"bad\.flo: not a \.flo file: magic number .* expected 202021\.25"):
        F.read_flo(tmp_path / "bad.flo")
    (tmp_path / "short.flo").write_bytes((tmp_path / "a.flo").read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"short\.flo: \.flo header says 7x5"):
        F.read_flo(tmp_path / "short.flo")


@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)])
def test_png16_reads_every_png_filter_type(filters):
    # libpng (KITTI's devkit, OpenCV) filters each row adaptively: the reader must undo all five filters
    array = RNG.integers(0, 2**16, (6, 9, 3)).astype(np.uint16)
    np.testing.assert_array_equal(F.read_png16(F.write_png16(array, filters)), array)


def test_pil_drops_the_low_byte_of_16_bit_rgb():
    # why read_png16 exists: PIL opens 16-bit RGB PNGs as 8-bit RGB
    array = np.full((2, 2, 3), 0x1234, np.uint16)
    with Image.open(io.BytesIO(F.write_png16(array))) as img:
        assert img.mode == "RGB" and np.asarray(img).max() < 256


def test_kitti_flow_png_values_and_mask():
    flow = np.round(RNG.uniform(-100, 100, (4, 5, 2)) * 64) / 64  # KITTI's 1/64 px steps
    valid = RNG.random((4, 5)) > 0.3
    decoded, mask = F.decode_kitti_flow(F.encode_kitti_flow(flow, valid, filters=(4, 1)))
    np.testing.assert_array_equal(mask, valid)
    np.testing.assert_array_equal(decoded[valid], flow[valid].astype(np.float32))
    assert (decoded[~valid] == 0).all()
    with pytest.raises(ValueError, match=r"k\.png: a KITTI flow PNG is 16-bit RGB .* bit depth 8"):
        F.decode_kitti_flow(png(np.zeros((2, 2, 3), np.uint8)), "k.png")


# --------------------------------------------------------------------------------- the layouts, through the CLI
def write_sintel(root, pairs: int = 2, h: int = 12, w: int = 16) -> dict:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(pairs + 1)]
    flows = {}
    for scene in ("alley_1", "market_2"):
        os.makedirs(root / "training" / "clean" / scene)
        os.makedirs(root / "training" / "flow" / scene)
        for i, frame in enumerate(frames, 1):
            Image.fromarray(frame).save(root / "training" / "clean" / scene / f"frame_{i:04d}.png")
        for i in range(1, pairs + 1):
            flow = rng.uniform(-5, 5, (h, w, 2)).astype(np.float32)
            F.write_flo(root / "training" / "flow" / scene / f"frame_{i:04d}.flo", flow)
            flows[f"{scene}_frame_{i:04d}"] = (frames[i - 1], frames[i], flow)
    return flows


def test_sintel_layout_to_batches(tmp_path):
    expected = write_sintel(tmp_path / "sintel")
    out = tmp_path / "out"
    assert (
        cli.main(["flow", "sintel", str(tmp_path / "sintel"), "--out", str(out), "--prefix", "val", "--no-progress"])
        == 0
    )
    got = eval_batches(str(out / "val-000000.tar"), (12, 16))
    assert sorted(got) == sorted(expected)  # keys name scene and frame; consecutive frames pair up
    for key, (frame1, frame2, flow) in expected.items():
        torch.testing.assert_close(got[key]["inputs"], as_input(frame1, frame2))
        torch.testing.assert_close(got[key]["target"], torch.from_numpy(flow))  # exact float32
        assert got[key]["valid"].all()


def test_kitti_layout_to_batches_keeps_the_mask(tmp_path):
    base = tmp_path / "kitti" / "training"
    for d in ("image_2", "flow_occ"):
        os.makedirs(base / d)
    expected = {}
    for n in range(2):
        frame1, frame2, flow = frames_flow(10, 14, n)
        flow = np.round(flow * 64) / 64
        valid = np.random.default_rng(n).random((10, 14)) > 0.4
        Image.fromarray(frame1).save(base / "image_2" / f"{n:06d}_10.png")
        Image.fromarray(frame2).save(base / "image_2" / f"{n:06d}_11.png")
        (base / "flow_occ" / f"{n:06d}_10.png").write_bytes(F.encode_kitti_flow(flow, valid, filters=(0, 1, 2, 3, 4)))
        expected[f"{n:06d}_10"] = (frame1, frame2, flow, valid)
    out = tmp_path / "out"
    assert (
        cli.main(["flow", "kitti", str(tmp_path / "kitti"), "--out", str(out), "--prefix", "val", "--no-progress"]) == 0
    )
    got = eval_batches(str(out / "val-000000.tar"), (8, 12))  # centre crop: rows 1..8, columns 1..12
    assert sorted(got) == sorted(expected)
    for key, (frame1, frame2, flow, valid) in expected.items():
        crop = (slice(1, 9), slice(1, 13))
        torch.testing.assert_close(got[key]["inputs"], as_input(frame1[crop], frame2[crop]))
        assert torch.equal(got[key]["valid"], torch.from_numpy(valid[crop]))
        target = np.where(valid[..., None], flow, 0)[crop]
        torch.testing.assert_close(got[key]["target"], torch.from_numpy(target.astype(np.float32)))


def test_chairs_layout_split_file_and_a_bad_flo_skipped(tmp_path, caplog):
    data = tmp_path / "FlyingChairs_release" / "data"
    os.makedirs(data)
    expected = {}
    for n in range(1, 5):
        frame1, frame2, flow = frames_flow(8, 10, n)
        write_ppm(data / f"{n:05d}_img1.ppm", frame1)
        write_ppm(data / f"{n:05d}_img2.ppm", frame2)
        F.write_flo(data / f"{n:05d}_flow.flo", flow)
        expected[f"{n:05d}"] = (frame1, frame2, flow)
    bad = data / "00003_flow.flo"
    bad.write_bytes(b"\0\0\0\0" + bad.read_bytes()[4:])  # wrong magic number
    (tmp_path / "FlyingChairs_release" / "FlyingChairs_train_val.txt").write_text("1\n2\n1\n1\n")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="datamodules.shards"):
        assert (
            cli.main(["flow", "chairs", str(tmp_path / "FlyingChairs_release"), "--out", str(out), "--no-progress"])
            == 0
        )
    warnings = [r.getMessage() for r in caplog.records if "00003_flow.flo" in r.getMessage()]
    assert len(warnings) == 1 and "not a .flo file: magic number" in warnings[0]
    import json

    index = json.loads((out / "index.json").read_text())["shards"]
    assert index == {"train-000000.tar": 2, "val-000000.tar": 1}  # 00003 skipped; 00002 is val (split file)
    got = {**eval_batches(str(out / "train-000000.tar"), (8, 10)), **eval_batches(str(out / "val-000000.tar"), (8, 10))}
    assert sorted(got) == ["00001", "00002", "00004"]
    for key in got:
        frame1, frame2, flow = expected[key]
        torch.testing.assert_close(got[key]["inputs"], as_input(frame1, frame2))
        torch.testing.assert_close(got[key]["target"], torch.from_numpy(flow))


def test_middlebury_layout_grey_frames_and_unknown_flow(tmp_path):
    scene = tmp_path / "mb" / "other-data" / "Dimetrodon"
    os.makedirs(scene)
    os.makedirs(tmp_path / "mb" / "other-gt-flow" / "Dimetrodon")
    grey1, grey2 = (RNG.integers(0, 256, (6, 8), dtype=np.uint8) for _ in range(2))
    Image.fromarray(grey1).save(scene / "frame10.png")  # Middlebury has grey scenes: read as RGB
    Image.fromarray(grey2).save(scene / "frame11.png")
    flow = RNG.uniform(-3, 3, (6, 8, 2)).astype(np.float32)
    flow[0, :3] = 1.7e9  # Middlebury's "unknown"
    F.write_flo(tmp_path / "mb" / "other-gt-flow" / "Dimetrodon" / "flow10.flo", flow)
    out = tmp_path / "out"
    assert (
        cli.main(["flow", "middlebury", str(tmp_path / "mb"), "--out", str(out), "--prefix", "test", "--no-progress"])
        == 0
    )
    got = eval_batches(str(out / "test-000000.tar"), (6, 8), split="test")["Dimetrodon"]
    rgb = lambda g: np.repeat(g[..., None], 3, axis=-1)  # noqa: E731
    torch.testing.assert_close(got["inputs"], as_input(rgb(grey1), rgb(grey2)))
    valid = np.ones((6, 8), bool)
    valid[0, :3] = False
    assert torch.equal(got["valid"], torch.from_numpy(valid))
    torch.testing.assert_close(got["target"], torch.from_numpy(np.where(valid[..., None], flow, 0)))


def test_list_file_pairs_without_flow_are_predicted(tmp_path):
    frame1, frame2, _ = frames_flow(8, 8, 3)
    Image.fromarray(frame1).save(tmp_path / "a.png")
    Image.fromarray(frame2).save(tmp_path / "b.png")
    (tmp_path / "pairs.txt").write_text("# frame1 frame2 [flow]\na.png b.png\n")
    out = tmp_path / "out"
    assert (
        cli.main(["flow", "list", str(tmp_path / "pairs.txt"), "--out", str(out), "--prefix", "test", "--no-progress"])
        == 0
    )
    got = eval_batches(str(out / "test-000000.tar"), 8, split="predict")["a"]
    torch.testing.assert_close(got["inputs"], as_input(frame1, frame2))
    assert not got["valid"].any() and not got["target"].any()  # no ground truth: nothing counts
    # ... and in validation the same pair, without flow, is refused before training
    from datamodules.errors import DataError

    with pytest.raises(DataError, match=r"no label key among \['flow\.npy'\]"):
        eval_batches(str(out / "test-000000.tar"), 8)


def test_a_layout_error_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["flow", "sintel", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Sintel 'training' folder" in err


# ---------------------------------------------------------------------------------------- crops and flips
def coded_sample(h: int = 12, w: int = 10) -> dict:
    """Frames whose pixels hold their own (x, y), a flow (x + 0.5, y + 100.25) and a mask (x + y) % 3 > 0: after
    any crop and flip, each output pixel tells where it came from, and the flow and mask must say the same."""
    ys, xs = np.mgrid[0:h, 0:w]
    frame = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    flow = np.stack([xs + 0.5, ys + 100.25], axis=-1).astype(np.float32)
    valid = (xs + ys) % 3 > 0
    return {
        "frame1.png": png(frame),
        "frame2.png": png(frame + 50),
        "flow.npy": npy_bytes(flow),
        "valid.png": png(valid.astype(np.uint8) * 255),
    }


@pytest.mark.parametrize("hflip,vflip", [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_random_crops_and_flips_keep_frames_flow_and_mask_aligned(tmp_path, hflip, vflip):
    url = write_tar(str(tmp_path / "t-0.tar"), [{"__key__": f"s{i}", **coded_sample()} for i in range(8)])
    dm = FlowDataModule(
        train_urls=url,
        crop_size=(5, 4),
        hflip=hflip,
        vflip=vflip,
        batch_size=8,
        num_workers=0,
        samples_per_epoch=16,
        shuffle_buffer=1,
        seed=3,
    )
    dm.setup("fit")
    corners = set()
    for batch in dm.train_dataloader():
        frames = ((batch["inputs"] + 1) * 127.5).round().long()  # (B, 2, 5, 4, 3)
        src_x, src_y = frames[:, 0, ..., 0], frames[:, 0, ..., 1]  # where each output pixel came from
        assert torch.equal(frames[:, 1], frames[:, 0] + 50)  # frame 2 crop = frame 1 crop
        u_sign, v_sign = (-1 if hflip else 1), (-1 if vflip else 1)
        torch.testing.assert_close(batch["target"][..., 0], u_sign * (src_x + 0.5).float())
        torch.testing.assert_close(batch["target"][..., 1], v_sign * (src_y + 100.25).float())
        assert torch.equal(batch["valid"], (src_x + src_y) % 3 > 0)
        # a flip mirrors the crop: x runs down the columns when flipped, up otherwise
        dx = src_x[:, 0, 1] - src_x[:, 0, 0]
        dy = src_y[:, 1, 0] - src_y[:, 0, 0]
        assert (dx == (-1 if hflip else 1)).all() and (dy == (-1 if vflip else 1)).all()
        corners |= {(int(x), int(y)) for x, y in zip(src_x[:, 0, 0], src_y[:, 0, 0])}
    assert len(corners) > 3  # random crops: many positions


def test_eval_crop_is_centred_and_never_flipped(tmp_path):
    url = write_tar(str(tmp_path / "v-0.tar"), [{"__key__": "s", **coded_sample()}])
    got = eval_batches(url, (5, 4), hflip=1.0, vflip=1.0)["s"]
    frames = ((got["inputs"] + 1) * 127.5).round().long()
    assert (frames[0, 0, 0, 0].item(), frames[0, 0, 0, 1].item()) == (3, 3)  # (12 - 5) // 2, (10 - 4) // 2
    torch.testing.assert_close(got["target"][0, 0], torch.tensor([3.5, 103.25]))


def test_flipped_synthetic_pair_still_warps_frame2_onto_frame1(tmp_path):
    # the physical check of the signs: warping frame 2 back by the (flipped) flow reproduces frame 1
    frame1, frame2, flow = FlowGenerator((32, 32), max_motion=3.0, textures="procedural").sample(5)
    sample = {"frame1.png": png(frame1), "frame2.png": png(frame2), "flow.npy": npy_bytes(flow)}
    url = write_tar(str(tmp_path / "t-0.tar"), [{"__key__": f"s{i}", **sample} for i in range(4)])
    for hflip, vflip in ((1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
        dm = FlowDataModule(
            train_urls=url, crop_size=32, hflip=hflip, vflip=vflip, batch_size=4, num_workers=0, samples_per_epoch=4
        )
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        f1, f2 = (((batch["inputs"][0, t] + 1) * 127.5).numpy() for t in (0, 1))
        warped, inside = F.backward_warp(f2, batch["target"][0].numpy())
        err = np.abs(warped - f1).mean(-1)[inside]
        unflipped_err = np.abs(F.backward_warp(f2, flow)[0] - f1).mean(-1)  # the flow left as it was: wrong
        assert np.median(err) < 2.0 and np.median(unflipped_err) > 4 * np.median(err)


# ------------------------------------------------------------------------------------------- the generator
def test_synthetic_flow_is_exact_and_seeded():
    gen = FlowGenerator((48, 64), max_motion=4.0, textures="procedural")
    frame1, frame2, flow = gen.sample(11)
    assert frame1.shape == frame2.shape == (48, 64, 3) and flow.shape == (48, 64, 2) and flow.dtype == np.float32
    for a, b in zip(gen.sample(11), (frame1, frame2, flow)):
        np.testing.assert_array_equal(a, b)  # same seed, same pair
    warped, inside = F.backward_warp(frame2, flow)
    err = np.abs(warped - frame1).mean(-1)
    still = np.abs(frame2.astype(np.float32) - frame1).mean(-1)
    # visible pixels match to bilinear interpolation; a few occluded ones do not
    assert np.median(err[inside]) < 1.5 and np.median(still) > 5
    assert 0.5 < np.linalg.norm(flow, axis=-1).mean() < 8
    # the layers move differently: the flow is not one affine field
    ys, xs = np.mgrid[0:48, 0:64]
    design = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], axis=1)
    residual = flow.reshape(-1, 2) - design @ np.linalg.lstsq(design, flow.reshape(-1, 2), rcond=None)[0]
    assert np.abs(residual).max() > 1.0


def test_fashion_mnist_silhouettes_when_installed():
    gen = FlowGenerator((32, 32), textures="auto")
    if gen.fashion is None:
        with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
            FlowGenerator((32, 32), textures="fashion-mnist")
        return
    frame1, frame2, flow = FlowGenerator((32, 32), textures="fashion-mnist").sample(0)
    warped, inside = F.backward_warp(frame2, flow)
    assert np.median(np.abs(warped - frame1).mean(-1)[inside]) < 1.5


# ------------------------------------------------------------------------------------------------ bad input
def test_corrupt_pairs_are_skipped_counted_and_named(tmp_path, caplog):
    frame1, frame2, flow = frames_flow(8, 8, 0)
    good = {"frame1.png": png(frame1), "frame2.png": png(frame2), "flow.npy": npy_bytes(flow)}
    nan_flow, inf_flow = flow.copy(), flow.copy()
    nan_flow[2, 3, 0] = np.nan
    inf_flow[0, 0, 1] = np.inf
    bad = {
        "sizes": {**good, "frame2.png": png(frame2[:, :7])},
        "flowshape": {**good, "flow.npy": npy_bytes(flow[:7])},
        "nan": {**good, "flow.npy": npy_bytes(nan_flow)},
        "inf": {**good, "flow.npy": npy_bytes(inf_flow)},
        "maskshape": {**good, "valid.png": png(np.full((8, 9), 255, np.uint8))},
        "noframe2": {k: v for k, v in good.items() if k != "frame2.png"},
        "intflow": {**good, "flow.npy": npy_bytes(flow.astype(np.int32))},
    }
    samples = (
        [{"__key__": "good0", **good}] + [{"__key__": k, **v} for k, v in bad.items()] + [{"__key__": "good1", **good}]
    )
    url = write_tar(str(tmp_path / "c-0.tar"), samples)
    dm = FlowDataModule(
        val_urls=url, crop_size=8, batch_size=4, num_workers=0, check_counts=False, max_eval_corrupt_fraction=1.0
    )
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        dm.setup("validate")
        keys = [k for b in dm.val_dataloader() for k in b["key"]]
    assert keys == ["good0", "good1"]
    assert dm.corrupt_samples == len(bad)
    lines = {k: [r.getMessage() for r in caplog.records if f"key={k}:" in r.getMessage()] for k in bad}
    assert all(len(v) == 1 and f"shard={url}" in v[0] for v in lines.values()), lines
    assert "frames of different sizes in one pair" in lines["sizes"][0]
    assert "disagrees with its frames" in lines["flowshape"][0]
    assert "NaN or inf at 1 pixels" in lines["nan"][0] and "NaN or inf" in lines["inf"][0]
    assert "valid mask" in lines["maskshape"][0] and "no frame2.png" in lines["noframe2"][0]


def test_training_skips_a_pair_without_flow(tmp_path):
    frame1, frame2, flow = frames_flow(8, 8, 0)
    good = {"frame1.png": png(frame1), "frame2.png": png(frame2), "flow.npy": npy_bytes(flow)}
    url = write_tar(
        str(tmp_path / "t-0.tar"),
        [{"__key__": "good", **good}, {"__key__": "noflow", "frame1.png": png(frame1), "frame2.png": png(frame2)}],
    )
    dm = FlowDataModule(train_urls=url, crop_size=8, batch_size=2, num_workers=0, samples_per_epoch=4, shuffle_buffer=1)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        assert batch["key"] == ["good", "good"]
    assert dm.corrupt_samples >= 1


def test_frames_smaller_than_the_crop_are_corrupt(tmp_path, caplog):
    frame1, frame2, flow = frames_flow(8, 8, 0)
    url = write_tar(
        str(tmp_path / "v-0.tar"),
        [{"__key__": "small", "frame1.png": png(frame1), "frame2.png": png(frame2), "flow.npy": npy_bytes(flow)}],
    )
    from datamodules.errors import DataError

    with caplog.at_level(logging.WARNING, logger="datamodules"), pytest.raises(DataError, match="every one of"):
        eval_batches(url, (8, 16))
    assert any(
        "key=small" in r.getMessage() and "smaller than crop_size 16x8" in r.getMessage() for r in caplog.records
    )


# ---------------------------------------------------------------------------------- facts and the CLI link
def test_facts_link_into_the_flow_model(tmp_path):
    from perceiver_lit.cli_links import ADAPTER, plan_links
    from perceiver_lit.models.flow import FlowPatchAdapter, PerceiverIOFlow

    dm = FlowDataModule(crop_size=(16, 24))
    assert dm.input_shape == (2, 16, 24, 3) and dm.num_classes == 2 and dm.multilabel is False
    tree = {
        "model": {
            "class_path": "perceiver_lit.tasks.Classification",
            "init_args": {
                "net": {
                    "class_path": "perceiver_lit.models.flow.PerceiverIOFlow",
                    "init_args": {"adapter": {"class_path": "perceiver_lit.models.flow.FlowPatchAdapter"}},
                }
            },
        }
    }
    assert ("input_shape", f"{ADAPTER}.init_args.input_shape") in plan_links(tree)
    # the linked shape builds a model whose output is the batch's target
    frame1, frame2, flow = frames_flow(20, 30, 0)
    url = write_tar(
        str(tmp_path / "v-0.tar"),
        [{"__key__": "s", "frame1.png": png(frame1), "frame2.png": png(frame2), "flow.npy": npy_bytes(flow)}],
    )
    batch = next(iter(FlowDataModule(val_urls=url, crop_size=(16, 24), num_workers=0, batch_size=1).val_dataloader()))
    net = PerceiverIOFlow(
        FlowPatchAdapter(dm.input_shape, num_channels=8, num_frequency_bands=4),
        num_latents=8,
        latent_dim=16,
        num_self_attends=1,
        num_self_attention_heads=2,
    )
    assert net(batch["inputs"]).shape == batch["target"].shape == (1, 16, 24, 2)


def test_bad_settings_fail_at_init():
    with pytest.raises(ValueError, match="permute_seed is not supported"):
        FlowDataModule(permute_seed=1)
    with pytest.raises(ValueError, match=r"hflip is a probability in \[0, 1\], got 2"):
        FlowDataModule(hflip=2)
    with pytest.raises(ValueError, match="crop_size must be an int or"):
        FlowDataModule(crop_size=(1, 2, 3))
    with pytest.raises(ValueError, match="predict_files is not supported .*`perceiver-lit-shards flow list"):
        FlowDataModule(predict_files="frames/*.png")


def test_without_foreground_every_pixel_warps_back_and_layers_occlude():
    # the background alone: no occlusion, so every pixel that stays in view matches to interpolation error
    for seed in range(3):
        frame1, frame2, flow = FlowGenerator((48, 64), textures="procedural", max_layers=0).sample(seed)
        warped, inside = F.backward_warp(frame2, flow)
        assert np.abs(warped - frame1).mean(-1)[inside].max() < 20
    # with foreground layers, some visible-in-frame pixels are hidden in frame 2: large errors there
    worst = []
    for seed in range(3):
        frame1, frame2, flow = FlowGenerator((48, 64), textures="procedural", max_layers=3).sample(seed)
        warped, inside = F.backward_warp(frame2, flow)
        worst.append(np.abs(warped - frame1).mean(-1)[inside].max())
    assert max(worst) > 40


def test_sintel_test_split_has_no_flow_and_is_predicted(tmp_path):
    scene = tmp_path / "sintel" / "test" / "final" / "ambush_1"
    os.makedirs(scene)
    frames = [RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    for i, frame in enumerate(frames, 1):
        Image.fromarray(frame).save(scene / f"frame_{i:04d}.png")
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                "flow",
                "sintel",
                str(tmp_path / "sintel"),
                "--split",
                "test",
                "--pass",
                "final",
                "--out",
                str(out),
                "--prefix",
                "test",
                "--no-progress",
            ]
        )
        == 0
    )
    got = eval_batches(str(out / "test-000000.tar"), 8, split="predict")
    assert sorted(got) == ["ambush_1_frame_0001", "ambush_1_frame_0002"]
    torch.testing.assert_close(got["ambush_1_frame_0002"]["inputs"], as_input(frames[1], frames[2]))
    assert not got["ambush_1_frame_0001"]["valid"].any()
