"""perceiver_lit/cli_errors.py on jsonargparse's own union dumps (text as jsonargparse 4.x writes it), and on a real
instantiation error from the CLI in-process. The console-script behaviour is in tests/integration/test_cli_errors.py."""

import pytest

from perceiver_lit.cli import PerceiverCLI
from perceiver_lit.cli_errors import ConfigError, condense_parse_error
from tests.fixtures.training import tiny_perceiver, write_config

NESTED = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
  Errors:
    - Expected a <class 'NoneType'>
    - Problem with given class_path 'perceiver_lit.tasks.Classification':
        Parser key "net":
          Does not validate against any of the Union subtypes
          Subtypes: [<class 'torch.nn.Module'>, <class 'NoneType'>]
          Errors:
            - Problem with given class_path 'perceiver_lit.models.Perceiver':
                Parser key "num_latents":
                  Expected a <class 'int'>. Got value: many
            - Expected a <class 'NoneType'>
          Given value type: <class 'str'>
          Given value: many
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='net.init_args.num_latents', val='many')"""


def test_a_nested_union_dump_condenses_to_the_field_and_the_cause():
    assert condense_parse_error(NESTED) == (
        "model.init_args.net.init_args.num_latents: Expected a <class 'int'>. Got value: many"
    )
    assert condense_parse_error("Parser key \"trainer.max_steps\": Expected a <class 'int'>") is None  # not a union


def test_instantiation_error_inside_the_model_is_a_config_error_naming_the_field(tmp_path):
    model = tiny_perceiver()
    model["init_args"]["net"]["init_args"]["num_self_attention_heads"] = 3  # latent_dim 16 is not divisible by 3
    cfg = write_config(
        tmp_path,
        {
            "model": model,
            "data": {"class_path": "datamodules.image.FashionMNISTDataModule", "init_args": {"batch_size": 4}},
        },
        "exp.yaml",
    )
    with pytest.raises(ConfigError) as info:
        PerceiverCLI(args=["--config", cfg, "--trainer.logger", "false"], run=False)
    line = str(info.value)
    assert "\n" not in line and line.startswith("model.init_args.net: "), line
    assert "Union" not in line and "3" in line
