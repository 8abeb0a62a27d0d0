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
