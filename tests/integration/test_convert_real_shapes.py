"""HF -> perceiver-lit conversion at the released checkpoints' shapes (randomly initialised: no download).

deepmind/vision-perceiver-{fourier,learned,conv} and deepmind/language-perceiver configs; batch 1, eval, no_grad.
The processor repeats one shared block, so num_blocks does not change the weights: the vision models run it
once (num_blocks=1, the very same parameter shapes) to keep the test affordable on 2 cores; the repetition itself
is checked at small shapes in tests/unit/test_convert.py (num_blocks=2).
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from perceiver_lit.convert import from_huggingface  # noqa: E402
from perceiver_lit.models import perceiver_io_imagenet, perceiver_io_language  # noqa: E402
from perceiver_lit.models.hf_names import HF_CONFIGS  # noqa: E402

pytestmark = pytest.mark.integration

VISION, LANGUAGE = HF_CONFIGS["vision"], HF_CONFIGS["language"]


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "cls_name,d_model,num_blocks,params",
    [
        ("PerceiverForImageClassificationFourier", 261, 1, 48_440_627),
        ("PerceiverForImageClassificationLearned", 512, 1, None),
        ("PerceiverForImageClassificationConvProcessing", 322, 1, None),
    ],
)
def test_vision_perceiver_real_shapes(cls_name, d_model, num_blocks, params):
    torch.manual_seed(0)
    cfg = transformers.PerceiverConfig(d_model=d_model, **{**VISION, "num_blocks": num_blocks})
    hf = getattr(transformers, cls_name)(cfg).eval()
    ours = from_huggingface(hf)
    n = sum(p.numel() for p in ours.parameters())
    if params is not None:
        assert n == params == sum(p.numel() for p in hf.parameters())
        with torch.device("meta"):
            assert shapes(perceiver_io_imagenet()) == shapes(ours)  # the preset loads these weights
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref, out = hf(inputs=x).logits, ours(x.permute(0, 2, 3, 1).contiguous())
    assert out.shape == (1, 1000)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_language_perceiver_real_shapes():
    torch.manual_seed(0)
    hf = transformers.PerceiverForMaskedLM(transformers.PerceiverConfig(**LANGUAGE)).eval()
    ours = from_huggingface(hf)
    with torch.device("meta"):
        assert shapes(perceiver_io_language()) == shapes(ours)
    ids = torch.randint(0, 262, (1, 2048))
    with torch.no_grad():
        ref, out = hf(inputs=ids).logits, ours(ids)
    assert out.shape == (1, 2048, 262)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
