"""Loading the settings from a composed config (config/load.py): a wrong type or an unknown key is one
line, a plain dict must set every key, every key is described, and hardware.compile reads true, false
and auto (and the booleans of configs recorded before auto)."""

from __future__ import annotations

import pytest
from helpers import settings_for

from fragment_llm.config.load import describe_keys, load_settings, to_plain
from fragment_llm.config.schema import CompileMode, ConfigError


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.n_layer=abc", "model.n_layer: Value 'abc'"),
        ("+model.typo=1", "model.typo is not a config key"),
        ("+trian.batch_size=1", "trian"),
        ("optimizer.name=adamx", "optimizer.name: Invalid value 'adamx'"),
        ("hardware.amp=maybe", "hardware.amp"),
        ("hardware.compile=maybe", "hardware.compile: Invalid value 'maybe', expected one of [true, false, auto]"),
        ("hardware.compile=1", "hardware.compile: Invalid value '1', expected one of [true, false, auto]"),
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


@pytest.mark.parametrize(
    "value,mode",
    [
        ("true", CompileMode.true),
        ("False", CompileMode.false),
        ("auto", CompileMode.auto),
        ("'true'", CompileMode.true),
    ],
)
def test_hardware_compile_takes_true_false_or_auto(value, mode):
    settings = settings_for([f"hardware.compile={value}"])
    assert settings.hardware.compile is mode and to_plain(settings)["hardware"]["compile"] == mode.value


def test_a_config_recorded_before_auto_loads_its_boolean():
    """hardware.compile was a bool: a checkpoint's or a run's recorded config says true or false."""
    plain = to_plain(settings_for([]))
    for recorded, mode in ((False, CompileMode.false), (True, CompileMode.true)):
        plain["hardware"]["compile"] = recorded
        assert load_settings(plain).hardware.compile is mode
    assert {doc.key: doc.allowed for doc in describe_keys()}["hardware.compile"] == "true, false, auto"
