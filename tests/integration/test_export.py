"""Export: ONNX (onnxruntime) and torch.export ExportedProgram against eager PyTorch, for every modality's adapter
with Perceiver and for Perceiver IO; an untraceable module is named in a one-line error. The `perceiver-lit-export`
command on a trained checkpoint is in test_inference.py (it shares that file's trained run)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from perceiver_lit.export import ExportError, example_inputs, save_exported_program, save_onnx
from perceiver_lit.models import (
    AudioAdapter,
    FourierQueries,
    ImageAdapter,
    MultimodalAdapter,
    Perceiver,
    PerceiverIO,
    PointCloudAdapter,
    TextAdapter,
    VideoAdapter,
)

pytestmark = pytest.mark.integration
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TINY = {"num_latents": 4, "latent_dim": 8, "num_self_attends_per_block": 1, "num_self_attention_heads": 2}


def perceiver(adapter):
    return Perceiver(adapter, num_classes=3, num_cross_attends=1, **TINY)


NETS = {
    # name: (net factory, input_shape)
    "image": (lambda: perceiver(ImageAdapter((6, 6, 1), num_frequency_bands=2)), (6, 6, 1)),
    "video": (lambda: perceiver(VideoAdapter((2, 4, 4, 3), patch_size=(1, 2, 2), num_frequency_bands=2)), (2, 4, 4, 3)),
    "audio-raw": (lambda: perceiver(AudioAdapter((64,), samples_per_patch=16, num_frequency_bands=2)), (64,)),
    "audio-mel": (lambda: perceiver(AudioAdapter((8, 4), num_frequency_bands=2)), (8, 4)),
    "pointcloud": (lambda: perceiver(PointCloudAdapter((16, 3), num_frequency_bands=2)), (16, 3)),
    "text": (lambda: perceiver(TextAdapter((12,), num_channels=8)), (12,)),
    "audio+video": (
        lambda: perceiver(
            MultimodalAdapter(
                {"video": (2, 4, 4, 3), "audio": (64,)},
                {
                    "video": {"patch_size": (1, 2, 2), "num_frequency_bands": 2},
                    "audio": {"samples_per_patch": 16, "num_frequency_bands": 2},
                },
            )
        ),
        {"video": (2, 4, 4, 3), "audio": (64,)},
    ),
    "io-image": (
        lambda: PerceiverIO(ImageAdapter((6, 6, 1), num_frequency_bands=2), num_classes=3, num_blocks=1, **TINY),
        (6, 6, 1),
    ),
    "io-fourier-queries": (
        lambda: PerceiverIO(
            ImageAdapter((4, 4, 1), num_frequency_bands=2),
            num_classes=3,
            queries=FourierQueries((4, 4), num_frequency_bands=2),
            num_blocks=1,
            **TINY,
        ),
        (4, 4, 1),
    ),
    "io-text-mlm": (
        lambda: PerceiverIO(
            TextAdapter((12,), num_channels=8),
            num_classes=262,
            num_blocks=1,
            output_head="tied_embedding",
            decoder_query_residual=False,
            queries=None,
            **{**TINY, "latent_dim": 8},
        ),
        (12,),
    ),
}


def _flat(example):
    out = []
    for x in example:
        out += list(x.values()) if isinstance(x, dict) else [x]  # torch's pytree order: a dict's own order
    return out


@pytest.mark.parametrize("name", list(NETS))
def test_onnx_and_exported_program_match_eager(name, tmp_path):
    torch.manual_seed(0)
    factory, shape = NETS[name]
    net = factory().eval()
    names = ["a", "b", "c"]
    onnx_path = save_onnx(net, example_inputs(net, shape, batch=2), str(tmp_path / "m.onnx"), names)
    pt2 = save_exported_program(net, example_inputs(net, shape, batch=2), str(tmp_path / "m.pt2"), names)
    x = example_inputs(net, shape, batch=3)  # another batch size than the export's: the batch is dynamic
    with torch.no_grad():
        eager = net(*x).numpy()
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    feeds = {i.name: v.numpy() for i, v in zip(session.get_inputs(), _flat(x))}
    np.testing.assert_allclose(session.run(None, feeds)[0], eager, atol=1e-4, rtol=1e-4)
    program = torch.export.load(pt2)
    with torch.no_grad():
        np.testing.assert_allclose(program.module()(*x).numpy(), eager, atol=1e-4, rtol=1e-4)
    # grid Fourier features are constants of the graph: no sin/cos left to compute (a point cloud's features are
    # of the points themselves, the data)
    import onnx

    model = onnx.load(onnx_path)
    trig = [n.op_type for n in model.graph.node if n.op_type in ("Sin", "Cos")]
    assert bool(trig) == (name == "pointcloud")
    assert json.loads({p.key: p.value for p in model.metadata_props}["class_names"]) == names
    with zipfile.ZipFile(pt2) as z:
        extra = [n for n in z.namelist() if n.endswith("class_names.json")]
        assert extra and json.loads(z.read(extra[0])) == names


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if bool(x.sum() > 0) else x  # a branch on tensor values: torch.export cannot trace it


def test_untraceable_module_is_named(tmp_path):
    net = perceiver(ImageAdapter((6, 6, 1), num_frequency_bands=2)).eval()
    net.head = nn.Sequential(net.head, DataDependent())
    with pytest.raises(
        ExportError,
        match=r"cannot export Perceiver to torch.export: module 'head\.1' "
        r"\(DataDependent\) does not trace: ",
    ):
        save_exported_program(net, example_inputs(net, (6, 6, 1)), str(tmp_path / "m.pt2"))
