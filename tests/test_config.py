"""Config composition and validation, through hydra.compose exactly as run.py composes."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config, settings_for
from fragment_llm.config import (
    ConfigError, DataSource, OptimizerName, SchedulerName, load_settings, swept_keys, to_plain,
)


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def test_default_config_is_tiny_cpu_pydoc():
    settings = settings_for([])
    assert (settings.model.n_layer, settings.model.n_head, settings.model.n_embd, settings.model.block_size) == (
        4, 4, 128, 128,
    )
    assert (settings.train.batch_size, settings.train.grad_accum_steps, settings.train.epochs) == (8, 1, 10)
    assert settings.model.vocab_size == 2048 and settings.optimizer.lr == 2e-3
    assert settings.hardware.device == "cpu" and settings.hardware.amp is False
    assert settings.optimizer.name is OptimizerName.adamw
    assert settings.scheduler.name is SchedulerName.cosine
    assert settings.data.source is DataSource.pydoc


@pytest.mark.parametrize(
    "group,expected",
    [
        ("model", ["large", "medium", "small", "tiny"]),
        ("hardware", ["cpu", "ddp", "gpu", "gpu_high"]),
        ("optimizer", ["adafactor", "adamw", "muon", "sgd"]),
        ("scheduler", ["constant", "cosine", "linear", "wsd"]),
        ("data", ["pydoc", "stdlib", "text"]),
        ("arch", ["gpt2", "modern"]),
    ],
)
def test_every_group_option_composes_and_validates(group, expected):
    assert options(group) == expected
    for option in expected:
        extra = ["data.path=corpus.txt"] if (group, option) == ("data", "text") else []
        settings = settings_for([f"{group}={option}", *extra])
        assert to_plain(settings)["model" if group == "arch" else group]  # arch sets model's layout keys


def test_hardware_profiles():
    """The guide's gpu and gpu_high tiers; the cpu tier as tuned for quality per minute (the guide's
    was 4 x 16 for 5 epochs)."""
    cpu, gpu, high = (settings_for([f"hardware={name}"]) for name in ("cpu", "gpu", "gpu_high"))
    assert (cpu.train.batch_size, cpu.train.grad_accum_steps, cpu.hardware.amp) == (8, 1, False)
    assert (gpu.train.batch_size, gpu.train.grad_accum_steps, gpu.hardware.amp) == (16, 4, True)
    assert (high.train.batch_size, high.train.grad_accum_steps, high.hardware.compile) == (32, 2, True)
    assert (cpu.train.epochs, gpu.train.epochs, high.train.epochs) == (10, 10, 20)


def test_command_line_overrides_beat_profiles():
    settings = settings_for(["hardware=gpu", "train.batch_size=3", "model=small", "model.dropout=0.2"])
    assert settings.train.batch_size == 3 and settings.model.dropout == 0.2 and settings.model.n_embd == 384


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


def test_load_settings_takes_plain_dicts():
    settings = load_settings({"model": {"n_layer": 2}, "train": {"max_iters": 7}})
    assert settings.model.n_layer == 2 and settings.train.max_iters == 7


def test_run_directory_names_carry_the_choices_and_a_unique_suffix():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    assert run_dir.startswith("${paths.outputs}/${run_stamp:date}/${run_stamp:time}")
    assert "${hydra:runtime.choices.model}-${hydra:runtime.choices.hardware}" in run_dir
    assert run_dir.endswith("_${run_stamp:id}")
    assert compose_config([]).paths.cache == "outputs/.cache"


@pytest.mark.parametrize("recipe", options("experiment"))
def test_every_experiment_recipe_composes_and_validates(recipe):
    settings_for([f"experiment={recipe}"])


def test_experiment_recipes_pick_the_guides_profiles():
    assert options("experiment") == ["debug", "high_end_gpu", "low_end_cpu", "mid_range_gpu"]
    cases = {"low_end_cpu": (256, "cpu", False, False), "mid_range_gpu": (384, "auto", True, False),
             "high_end_gpu": (768, "auto", True, True)}
    for recipe, expected in cases.items():
        settings = settings_for([f"experiment={recipe}"])
        assert (settings.model.n_embd, settings.hardware.device, settings.hardware.amp,
                settings.hardware.compile) == expected, recipe
    # The command line still beats a recipe.
    assert settings_for(["experiment=mid_range_gpu", "model.n_layer=2"]).model.n_layer == 2


@pytest.mark.parametrize("model", options("model"))
def test_debug_makes_any_model_tiny_and_fast(model):
    settings = settings_for([f"model={model}", "hardware=gpu_high", "experiment=debug"])
    assert (settings.model.n_layer, settings.model.n_embd, settings.model.block_size) == (1, 64, 128)
    assert settings.train.max_iters <= 10 and settings.hardware.compile is False


def test_hparams_search_optuna_minimises_over_lr_weight_decay_warmup_and_width():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hparams_search=optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_.lower() and sweeper.direction == "minimize"
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "scheduler.warmup_fraction", "model.n_embd"}
    for n_head in (4, 6, 12, 16):  # every width choice fits every model group's heads
        assert all(width % n_head == 0 for width in (96, 192, 384))
    assert "choice(96, 192, 384)" in sweeper.params["model.n_embd"]


def test_sweep_directories_are_named_after_what_they_sweep():
    assert swept_keys(["optimizer.lr=1e-3,3e-4", "model=tiny,small", "data.path=/a/b.txt"]) == "lr-model"
    assert swept_keys(["train.max_iters=range(2,4)", "hparams_search=optuna"]) == "max_iters-optuna"
    assert swept_keys(["train.max_iters=3"]) == "sweep"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    sweep_dir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["dir"]
    assert sweep_dir == "${paths.outputs}/multirun/${run_stamp:date}/${run_stamp:time}_${swept_keys:}_${run_stamp:id}"
