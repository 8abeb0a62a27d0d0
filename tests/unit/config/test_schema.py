"""What each key takes (config/schema.py): its range, a finite number, the keys an option needs, a
duration; every failure one line naming the key."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from helpers import settings_for

from fragment_llm.config import schema as config_module
from fragment_llm.config.schema import ConfigError


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.vocab_size=100", "model.vocab_size=100 is out of range [256, 100000]"),
        ("model.vocab_size=100001", "model.vocab_size=100001"),
        ("model.block_size=8", "model.block_size=8 is out of range [16, 4096]"),
        ("model.block_size=4097", "model.block_size=4097"),
        ("model.n_layer=0", "model.n_layer=0 is out of range [1, 48]"),
        ("model.n_layer=49", "model.n_layer=49"),
        ("model.n_head=33", "model.n_head=33 is out of range [1, 32]"),
        ("model.n_embd=32", "model.n_embd=32 is out of range [64, 2048]"),
        ("model.n_embd=4096", "model.n_embd=4096"),
        ("model.dropout=1.5", "model.dropout=1.5 is out of range [0.0, 0.9]"),
        ("model.dropout=-0.1", "model.dropout=-0.1"),
        ("train.batch_size=0", "train.batch_size=0 is out of range [1, 256]"),
        ("train.batch_size=257", "train.batch_size=257"),
        ("train.grad_accum_steps=0", "train.grad_accum_steps=0"),
        ("optimizer.lr=0", "optimizer.lr=0.0 is out of range (0.0, 0.01]"),
        ("optimizer.lr=0.1", "optimizer.lr=0.1"),
        ("train.epochs=0", "train.epochs=0"),
        ("train.max_iters=0", "train.max_iters=0"),
        ("train.sample_every=-1", "train.sample_every=-1 is out of range [0, 1000000000]"),
        ("model.n_embd=130", "model.n_embd=130 is not divisible by model.n_head=4"),
        ("hardware.device=tpu", "hardware.device=tpu is not a device"),
        ("data=text", "data.path is not set"),
        ("data.val_fraction=0.9", "data.val_fraction=0.9"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as error:
        settings_for([override])
    message = str(error.value)
    assert needle in message
    assert "\n" not in message


def test_a_key_its_option_uses_must_be_set():
    with pytest.raises(ConfigError, match="optimizer.momentum is not set, and optimizer=sgd needs it"):
        settings_for(["optimizer=sgd", "~optimizer.momentum"])
    with pytest.raises(ConfigError, match="scheduler.decay_fraction is not set, and scheduler=wsd needs it"):
        settings_for(["scheduler=wsd", "~scheduler.decay_fraction"])
    assert settings_for(["optimizer=adamw"]).optimizer.momentum is None  # adamw has no momentum


FLOAT_KEYS = [
    f"{section}.{field.name}"
    for section, node in config_module.Config.__dataclass_fields__.items()
    for field in dataclasses.fields(node.default_factory)
    if typing.get_type_hints(node.default_factory)[field.name] in (float, typing.Optional[float])
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_refuses_nan_and_inf(key, value):
    with pytest.raises(ConfigError, match="is not a finite number") as error:
        settings_for(["optimizer=muon", "scheduler=wsd", f"{key}={value}"])  # muon and wsd have every key of theirs
    assert str(error.value).startswith(f"{key}={value}")


def test_the_float_keys_are_found():
    assert {
        "optimizer.lr",
        "train.grad_clip",
        "model.dropout",
        "data.val_fraction",
        "model.logit_softcap",
        "scheduler.decay_fraction",
    } <= set(FLOAT_KEYS)


def test_rotary_positions_need_an_even_head_size():
    with pytest.raises(ConfigError, match="even head size"):
        settings_for(["model.n_embd=66", "model.n_head=2", "arch=modern"])
    assert settings_for(["model.n_embd=66", "model.n_head=2", "arch=gpt2"]).model.position.value == "learned"


@pytest.mark.parametrize("value", ["ten minutes", "0s", "-5m", "1e400s", "nan"])
def test_a_bad_time_budget_is_one_line(value):
    with pytest.raises(ConfigError, match=f"train.time_budget={value} is not a duration; use e.g."):
        settings_for([f"train.time_budget={value}"])


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("10m", 600), ("1.5h", 5400), ("45", 45), ("2 h", 7200)])
def test_durations(text, seconds):
    assert settings_for([f"train.time_budget='{text}'"]).train.budget_seconds == seconds
