"""The command line before Hydra (launch/compose.py): read as Hydra reads it, overrides checked in one line
naming the closest key or option, and the resolvers that name run and sweep directories."""

from __future__ import annotations

import os
import re

import pytest
from helpers import CONF_DIR, settings_for
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fragment_llm.config.schema import ConfigError, DataSource
from fragment_llm.launch import conf
from fragment_llm.launch.compose import check_overrides, command_line, launches_sweep, swept_keys, with_implied_choices


def test_the_command_line_is_read_as_hydra_reads_it():
    arguments = command_line(["-m", "--cfg", "job", "-cn", "config", "model=small", "optimizer.lr=1e-3,3e-4"])
    assert arguments.overrides == ["model=small", "optimizer.lr=1e-3,3e-4"] and arguments.multirun
    assert command_line(["--help", "train.max_iters=3"]).overrides == ["train.max_iters=3"]
    assert launches_sweep(["-m", "optimizer.lr=1e-3"]) and launches_sweep(["hparams_search=optuna"])
    assert not launches_sweep(["model=small"]) and not launches_sweep(["hparams_search=null"])


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["train.checkpoint_every=1"], "train.checkpoint_every is called train.checkpoint_every_epochs now"),
        (["debug=slow"], "debug=slow is not an option of debug; choose one of fast"),
        (
            ["optimizer=muon", "scheduler.decay_fraction=0.5"],
            "scheduler.decay_fraction is not a setting of scheduler=cosine",
        ),
    ],
)
def test_check_overrides_knows_renamed_keys_the_debug_group_and_option_keys(overrides, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        check_overrides(overrides)
    check_overrides(
        [
            "hardware=gpu_high",
            "hardware.nproc=2",
            "experiment=high_end_gpu",
            "debug=fast",
            "scheduler=wsd",
            "scheduler.decay_fraction=0.5",
            "experiment=debug",
        ]
    )


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["model.nembd=128"], "model.nembd is not a config key; did you mean model.n_embd?"),
        (["train.lr=1e-3"], "did you mean optimizer.lr?"),
        (["modle=small"], "did you mean model?"),
        (["model=tinny"], "model=tinny is not an option of model; choose one of auto, large, medium, small, tiny"),
        (["+model.n_embd=64"], "model.n_embd exists already; drop the +"),
        (["model.n_layer=["], "is not a valid override"),
        (["optimizer.momentum=0.5"], "optimizer.momentum is not a setting of optimizer=adamw, only of optimizer=muon"),
        (["optimizer=adamw,sgd", "optimizer.beta1=0.5"], "optimizer.beta1 is not a setting of optimizer=sgd"),
        (["optimizer=choice(adamw,sgd)", "optimizer.momentum=0.5"], "not a setting of optimizer=adamw"),
        (["optimizer.momentum=0.5", "data.path=a[1].txt"], "data.path=a[1].txt is not a valid override"),
    ],
)
def test_unknown_keys_and_options_are_one_line_naming_the_closest(overrides, needle):
    with pytest.raises(ConfigError) as error:
        check_overrides(overrides)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_valid_overrides_pass_the_check():
    check_overrides(
        [
            "model=tiny,small",
            "optimizer.lr=1e-3",
            "hydra/launcher=joblib",
            "experiment=debug",
            "+model.typo=1",
            "~train.seed",
            "hydra.run.dir=x",
            "model.n_embd=choice(64,128)",
        ]
    )


def test_run_directory_names_carry_the_choices_and_a_unique_suffix():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    assert run_dir.startswith("${paths.outputs}/${run_stamp:date}/${run_stamp:time}")
    assert "${hydra:runtime.choices.model}-${hydra:runtime.choices.hardware}" in run_dir
    assert run_dir.endswith("_${run_stamp:id}")
    assert conf.compose([]).paths.cache == "outputs/.cache"


@pytest.mark.parametrize(
    "overrides,name",
    [
        ([], "tiny-cpu"),
        (["experiment=debug"], "debug-tiny-cpu"),
        (["debug=fast"], "debug-tiny-cpu"),
        (["experiment=debug", "debug=fast"], "debug-tiny-cpu"),
        (["experiment=mid_range_gpu", "debug=fast"], "mid_range_gpu-debug-small-gpu"),
    ],
)
def test_a_run_directory_names_its_recipe(overrides, name):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from fragment_llm.launch.compose import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    assert re.fullmatch(rf"\d\d-\d\d-\d\d_{name}_[0-9a-f]{{4}}", os.path.basename(cfg.hydra.run.dir))


def test_sweep_directories_are_named_after_what_they_sweep():
    assert swept_keys(["optimizer.lr=1e-3,3e-4", "model=tiny,small", "data.path=/a/b.txt"]) == "lr-model"
    assert swept_keys(["train.max_iters=range(2,4)", "hparams_search=optuna"]) == "max_iters-optuna"
    assert swept_keys(["train.max_iters=3"]) == "sweep"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    sweep_dir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["dir"]
    assert sweep_dir == "${paths.outputs}/multirun/${run_stamp:date}/${run_stamp:time}_${swept_keys:}_${run_stamp:id}"


def test_a_key_that_only_one_option_reads_implies_that_option():
    """`python run.py data.path=my_corpus/` reads my_corpus/, not the default corpus (issue 22)."""
    assert with_implied_choices(["data.path=c.jsonl"]) == ["data.path=c.jsonl", "data=text"]
    assert with_implied_choices(["-m", "data.name=a/b,c/d"]) == ["-m", "data.name=a/b,c/d", "data=hf"]
    assert with_implied_choices(["data=mix", "data.path=x"]) == ["data=mix", "data.path=x"]  # the user's choice stands
    assert with_implied_choices(["model=small"]) == ["model=small"]
    assert with_implied_choices(["data.sources=[{source:pydoc}]"])[-1] == "data=mix"
    settings = settings_for(with_implied_choices(["data.path=c.jsonl", "data.text_field=story"]))
    assert settings.data.source is DataSource.text and settings.data.text_field == "story"
