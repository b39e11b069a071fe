"""Each model setting is declared once: in the model's signature, with an `Args:` line that the CLI's help shows.

The config dataclasses (`PerceiverConfig`, ...) that presets, `perceiver-lit-convert` and HF export read are derived
from the signatures (models/hparams.py), so their fields and defaults must be the signature's; a preset's arguments
must be arguments of its model; and every argument of a class the CLI can build as (part of) `net` is documented.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import docstring_parser
import pytest
import torch

from perceiver_lit import models as M
from perceiver_lit.models import presets
from perceiver_lit.models.hf_names import DENSE_NAMES, released
from perceiver_lit.models.hparams import declared_defaults

CONFIGS = [
    (M.Perceiver, M.PerceiverConfig),
    (M.PerceiverIO, M.PerceiverIOConfig),
    (M.PerceiverIOFlow, M.PerceiverIOFlowConfig),
    (M.PerceiverIOMultimodalAutoencoder, M.MultimodalAutoencoderConfig),
    (M.ConvNet, M.ConvNetConfig),
]

# Every class a config can name under `net` (models, adapters, query providers, the dense decoder) and the layers.
DOCUMENTED = [
    M.Perceiver,
    M.PerceiverIO,
    M.PerceiverIOFlow,
    M.PerceiverIOMultimodalAutoencoder,
    M.ConvNet,
    M.ImageAdapter,
    M.VideoAdapter,
    M.AudioAdapter,
    M.PointCloudAdapter,
    M.TextAdapter,
    M.MultimodalAdapter,
    M.FlowPatchAdapter,
    M.OneHotAdapter,
    M.TrainableQueries,
    M.FourierQueries,
    M.MultimodalQueries,
    M.GridQueries,
    M.DenseDecoder,
    M.CrossAttentionLayer,
    M.SelfAttentionLayer,
    M.SelfAttentionBlock,
    M.FourierPositionEncoding,
    M.LearnedPositionEncoding,
    M.pretrained,
]


def _keyword_arguments(cls: type) -> dict[str, inspect.Parameter]:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


@pytest.mark.parametrize("model, config", CONFIGS, ids=lambda c: c.__name__)
def test_config_dataclass_has_the_signatures_fields_and_defaults(model, config):
    params = {n: p for n, p in _keyword_arguments(model).items() if n not in ("adapter", "queries")}
    fields = {f.name: f for f in dataclasses.fields(config)}
    assert list(fields) == list(params)
    for name, p in params.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert default == (dataclasses.MISSING if p.default is p.empty else p.default), name


def test_a_models_config_records_its_arguments_and_rebuilds_it():
    adapter = M.ImageAdapter((4, 4, 3), num_frequency_bands=2)
    torch.manual_seed(0)
    net = M.PerceiverIO(
        adapter,
        num_classes=3,
        num_latents=4,
        latent_dim=8,
        num_blocks=2,
        num_self_attention_heads=2,
        decoder_num_heads=2,
    )
    assert net.config.num_latents == 4 and net.config.decoder_num_heads == 2 and net.config.num_classes == 3
    torch.manual_seed(0)
    again = M.PerceiverIO.from_config(adapter, net.config)
    assert again.config == net.config
    for (k, a), (k2, b) in zip(net.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_preset_arguments_are_arguments_of_its_model(name):
    args = getattr(presets, f"{name.upper()}_ARGS")
    model = inspect.signature(presets.PRESETS[name]).return_annotation
    cls = getattr(M, model)
    assert set(args) <= set(_keyword_arguments(cls)), set(args) - set(_keyword_arguments(cls))


def _documented(cls) -> dict[str, str]:
    """As jsonargparse reads them: the Args: of the class, its __init__, and its base classes."""
    docs = {}
    for src in [*reversed(inspect.getmro(cls)[1:]), cls.__init__, cls] if inspect.isclass(cls) else [cls]:
        for p in docstring_parser.parse(src.__doc__ or "").params:
            docs[p.arg_name] = p.description
    return docs


@pytest.mark.parametrize("cls", DOCUMENTED, ids=lambda c: c.__name__)
def test_every_argument_has_an_args_line(cls):
    docs = _documented(cls)
    undocumented = [n for n in _keyword_arguments(cls) if not docs.get(n)]
    # one name a line: jsonargparse reads "a, b: ..." as documenting neither
    assert not undocumented, f"{cls.__name__}: no Args: line for {undocumented}"


def test_cli_help_explains_the_net(capsys):
    """`perceiver-lit fit --config configs/quickstart.yaml --model.help ... --model.net.help ...` shows the net's
    arguments with their Args: text, as it does for the task's."""
    from perceiver_lit.cli import PerceiverCLI

    quickstart = Path(__file__).parents[2] / "configs" / "quickstart.yaml"
    with pytest.raises(SystemExit):
        PerceiverCLI(
            args=[
                "fit",
                "--config",
                str(quickstart),
                "--model.help",
                "perceiver_lit.tasks.Classification",
                "--model.net.help",
                "perceiver_lit.models.Perceiver",
            ]
        )
    out = " ".join(capsys.readouterr().out.split())
    assert "--model.net.num_latents NUM_LATENTS N, the rows of the learned latent array." in out
    assert "--model.net.input_keep INPUT_KEEP in training, the fraction of input elements" in out


def test_declared_defaults_are_a_signatures_defaults_by_name():
    def target(a, b: int = 1, *args, c: str | None = None, **kwargs):
        return a, b, c, args, kwargs

    assert declared_defaults(target) == {"b": 1, "c": None}


def test_released_gives_a_released_models_settings_in_our_names_and_leaves_out_what_it_does_not_set():
    # The widening factors are HF's defaults, not set by the release: they stay the model's own.
    assert released("optical_flow", DENSE_NAMES) == {
        "num_latents": 2048,
        "latent_dim": 512,
        "num_self_attention_heads": 16,
        "num_cross_attention_heads": 1,
        "num_self_attends": 24,
    }
