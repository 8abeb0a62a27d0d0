"""The model's layout keys (config/shape.py): a value outside a key's choices or range is one line."""

from __future__ import annotations

import pytest
from helpers import settings_for

from fragment_llm.config.schema import ConfigError


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.position=alibi", "model.position"),
        ("model.activation=tanh", "model.activation"),
        ("model.logit_softcap=-1", "model.logit_softcap=-1.0 is out of range"),
        ("model.n_head=64", "model.n_head=64 is out of range"),
    ],
)
def test_bad_layout_values_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        settings_for([override])


def test_conf_arch_gpt2_spells_the_layout_a_model_without_layout_keys_has():
    """conf/arch/gpt2.yaml shows GPT-2's values to a reader; GPTConfig's defaults are what a checkpoint
    written before a layout key existed builds. They must be the same."""
    from omegaconf import OmegaConf

    from fragment_llm.config.shape import FIELDS, GPT2_LAYOUT
    from fragment_llm.launch.conf import CONF_DIR

    spelled = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "arch" / "gpt2.yaml"))
    layout = {name: value for name, value in GPT2_LAYOUT.items() if name not in ("dropout", "bias")}
    assert spelled == layout
    assert set(spelled) | {"dropout", "bias"} | {name for name in FIELDS if name not in GPT2_LAYOUT} == set(FIELDS)


def test_a_model_config_from_a_file_is_checked_against_the_definition():
    from fragment_llm.config.shape import config_problem

    shape = {"vocab_size": 300, "block_size": 32, "n_layer": 1, "n_head": 2, "n_embd": 64}
    assert config_problem(shape) is None
    assert "is not one of learned, rope" in config_problem({**shape, "position": "alibi"})
    assert "is not in [1, 256]" in config_problem({**shape, "n_layer": 1000})
    assert "is not true or false" in config_problem({**shape, "bias": 1})
    assert "not a model's" in config_problem({**shape, "colour": "red"})
    assert "does not split into 3 heads" in config_problem({**shape, "n_head": 3})
    assert "position's size" in config_problem({**shape, "n_embd": 66, "n_head": 6, "position": "rope"})  # odd heads
