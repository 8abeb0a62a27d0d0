"""Loading the settings from a composed config (config/load.py): a wrong type or an unknown key is one
line, a plain dict must set every key, and every key is described."""

from __future__ import annotations

import pytest
from helpers import settings_for

from fragment_llm.config.load import describe_keys, load_settings, to_plain
from fragment_llm.config.schema import ConfigError


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.n_layer=abc", "model.n_layer: Value 'abc'"),
        ("+model.typo=1", "model.typo is not a config key"),
        ("+trian.batch_size=1", "trian"),
        ("optimizer.name=adamx", "optimizer.name: Invalid value 'adamx'"),
        ("hardware.amp=maybe", "hardware.amp"),
    ],
)
def test_wrong_types_and_unknown_keys_fail_with_one_line(override, needle):
    with pytest.raises(ConfigError) as error:
        settings_for([override])
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_load_settings_takes_plain_dicts_that_set_every_key():
    plain = to_plain(settings_for(["model.n_layer=2", "train.max_iters=7"]))
    settings = load_settings(plain)
    assert settings.model.n_layer == 2 and settings.train.max_iters == 7
    # A partial dict would be another run than `python run.py`'s: no key falls back to a default.
    with pytest.raises(ConfigError) as error:
        load_settings({"model": {"n_layer": 2}, "train": {"max_iters": 7}})
    assert str(error.value).startswith("model.vocab_size is not set; give model.vocab_size=VALUE")
    assert "\n" not in str(error.value)


def test_every_key_has_help_and_every_number_a_range():
    assert all(doc.help for doc in describe_keys())
    ranged = {doc.key for doc in describe_keys() if doc.allowed.startswith(("[", "("))}
    assert {"model.vocab_size", "train.batch_size", "optimizer.lr", "data.val_fraction"} <= ranged
