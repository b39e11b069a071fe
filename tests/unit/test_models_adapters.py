"""Input adapters: output shapes and channel counts, permuted inputs, multimodal padding and modality dropout."""

import pytest
import torch

from perceiver_lit.models import (
    AudioAdapter,
    ImageAdapter,
    MultimodalAdapter,
    PointCloudAdapter,
    TextAdapter,
    VideoAdapter,
)
from perceiver_lit.models.position import seeded_permutation


def check(adapter, x, m, c):
    out, mask = adapter(x)
    assert out.shape == (x.shape[0] if not isinstance(x, dict) else 2, m, c)
    assert adapter.num_output_channels == c and adapter.num_elements == m
    assert torch.isfinite(out).all()
    return out, mask


def test_image_adapter_variants():
    x = torch.randn(2, 8, 6, 3)
    out, _ = check(ImageAdapter((8, 6, 3), num_frequency_bands=4), x, 48, 3 + 2 * (2 * 4 + 1))
    torch.testing.assert_close(out[:, :, :3], x.reshape(2, 48, 3))  # pixels first, then positions
    check(ImageAdapter((8, 6, 3), position_encoding="learned", num_position_channels=5), x, 48, 8)
    check(ImageAdapter((8, 6, 3), num_frequency_bands=4, concat_or_add="add"), x, 48, 3)
    check(
        ImageAdapter(
            (8, 6, 3), prep="conv1x1", prep_channels=16, position_encoding="learned", num_position_channels=16
        ),
        x,
        48,
        32,
    )
    # HF conv prep: 7x7/2 conv then 3x3/2 max-pool: 16 -> 8 -> 3
    check(
        ImageAdapter((16, 16, 3), prep="conv", prep_channels=8, num_frequency_bands=4),
        torch.randn(2, 16, 16, 3),
        9,
        8 + 18,
    )
    with pytest.raises(ValueError, match="prep"):
        ImageAdapter((8, 6, 3), prep="patches")


def test_video_audio_points_text_shapes():
    check(
        VideoAdapter((4, 8, 8, 3), patch_size=(2, 4, 4), num_frequency_bands=2),
        torch.randn(2, 4, 8, 8, 3),
        2 * 2 * 2,
        2 * 4 * 4 * 3 + 3 * 5,
    )
    check(AudioAdapter((512,), samples_per_patch=128, num_frequency_bands=4), torch.randn(2, 512), 4, 128 + 9)
    check(AudioAdapter((10, 8), num_frequency_bands=4), torch.randn(2, 10, 8), 80, 1 + 18)
    check(PointCloudAdapter((50, 3), num_frequency_bands=8), torch.randn(2, 50, 3), 50, 3 + 48)
    ids = torch.randint(0, 262, (2, 12))
    pad = torch.zeros(2, 12, dtype=torch.bool)
    out, mask = TextAdapter((12,), num_channels=16, max_seq_len=32)(ids, pad)
    assert out.shape == (2, 12, 16) and mask is pad
    with pytest.raises(ValueError, match="not divisible"):
        AudioAdapter((500,), samples_per_patch=128)


def test_video_patches_hold_the_right_voxels():
    x = torch.arange(2 * 4 * 4 * 1, dtype=torch.float32).reshape(1, 2, 4, 4, 1)
    out, _ = VideoAdapter((2, 4, 4, 1), patch_size=(2, 2, 2), num_frequency_bands=1)(x)
    first_patch = x[0, :2, :2, :2, 0].reshape(-1)  # (pt, ph, pw) order
    torch.testing.assert_close(out[0, 0, :8], first_patch)


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda s: ImageAdapter((4, 5, 2), num_frequency_bands=3, permute_seed=s), (4, 5, 2)),
        (lambda s: AudioAdapter((64,), samples_per_patch=8, num_frequency_bands=3, permute_seed=s), (64,)),
        (lambda s: AudioAdapter((6, 4), num_frequency_bands=3, permute_seed=s), (6, 4)),
    ],
)
def test_permute_seed_keeps_each_element_with_its_position(make, shape):
    """Scramble the elements as a data module does; the adapter's output is the same set of rows, reordered."""
    torch.manual_seed(0)
    x = torch.randn(2, *shape)
    plain, _ = make(None)(x)
    n = plain.shape[1]
    perm = seeded_permutation(n, 11)
    xs = x.reshape(2, n, -1)[:, perm].reshape(x.shape)  # data-side permutation
    permuted, _ = make(11)(xs)
    torch.testing.assert_close(permuted, plain[:, perm])


def test_multimodal_padding_and_dropout():
    torch.manual_seed(0)
    shapes = {"video": (2, 4, 4, 3), "audio": (64,)}
    mm = MultimodalAdapter(
        shapes,
        {
            "video": {"patch_size": (2, 2, 2), "num_frequency_bands": 2},
            "audio": {"samples_per_patch": 16, "num_frequency_bands": 2},
        },
        min_padding_size=4,
        modality_dropout={"video": 1.0},
    )
    v, a = mm.adapters["video"], mm.adapters["audio"]
    c = max(v.num_output_channels, a.num_output_channels) + 4
    x = {"video": torch.randn(2, *shapes["video"]), "audio": torch.randn(2, 64)}
    mm.eval()
    out, mask = check(mm, x, 4 + 4, c)
    assert mask is None
    # audio first (sorted names); its padding channels carry the learned audio embedding
    torch.testing.assert_close(out[0, 0, a.num_output_channels :], mm.padding["audio"])
    mm.train()
    _, mask = mm(x)
    assert mask.shape == (2, 8) and not mask[:, :4].any() and mask[:, 4:].all()  # video dropped for all (p=1)


def test_multimodal_never_drops_everything():
    mm = MultimodalAdapter(
        {"a": (16,), "b": (16,)},
        {
            "a": {
                "class_path": "perceiver_lit.models.AudioAdapter",
                "init_args": {"samples_per_patch": 4, "num_frequency_bands": 1},
            },
            "b": {
                "class_path": "perceiver_lit.models.AudioAdapter",
                "init_args": {"samples_per_patch": 4, "num_frequency_bands": 1},
            },
        },
        modality_dropout={"a": 1.0, "b": 1.0},
    ).train()
    _, mask = mm({"a": torch.randn(3, 16), "b": torch.randn(3, 16)})
    assert not mask.all(dim=1).any()
    with pytest.raises(ValueError, match="no input_shape"):
        MultimodalAdapter({"a": (16,)}, {"z": {}})


def test_modality_paddings_are_truncated_normal_like_deepminds_position_encodings():
    """DeepMind's modality embeddings are TrainablePositionEncodings: truncated normal, std 0.02, cut at 2 std."""
    from perceiver_lit.models import MultimodalQueries, TrainableQueries

    torch.manual_seed(0)
    mm = MultimodalAdapter(
        {"audio": (64,), "text": (8,)},
        {"audio": {"samples_per_patch": 16, "num_frequency_bands": 2}, "text": {}},
        min_padding_size=5000,
    )
    mq = MultimodalQueries({"a": TrainableQueries(2, 8), "b": TrainableQueries(3, 4)}, min_padding_size=5000)
    for padding in (*mm.padding.values(), *mq.padding.values()):
        assert padding.abs().max() <= 0.04 + 1e-7  # randn * 0.02 would exceed 2 std ~230 times
        assert 0.016 < padding.std() < 0.019  # 0.02 x 0.88 (the truncation's variance)
