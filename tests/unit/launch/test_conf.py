"""Config composition and validation, through hydra.compose exactly as run.py composes."""

from __future__ import annotations

import re

import pytest
from conftest import CONF_DIR, ROOT, compose_config, settings_for
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf

from fragment_llm.config.load import describe_keys, load_settings, to_plain
from fragment_llm.config.schema import ConfigError, DataSource, OptimizerName, SchedulerName
from fragment_llm.config.shape import Position
from fragment_llm.launch.compose import check_overrides, command_line, launches_sweep, swept_keys
from fragment_llm.launch.keys import key_table
from fragment_llm.train.from_run import resume_settings


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


def test_default_config_is_tiny_cpu_pydoc():
    settings = settings_for([])
    assert (settings.model.n_layer, settings.model.n_head, settings.model.n_embd, settings.model.block_size) == (
        4,
        4,
        128,
        128,
    )
    assert (settings.train.batch_size, settings.train.grad_accum_steps, settings.train.epochs) == (8, 1, 8)
    assert settings.model.vocab_size == 1024 and settings.optimizer.lr == 2e-3
    assert settings.hardware.device == "cpu" and settings.hardware.amp is False
    assert settings.optimizer.name is OptimizerName.adamw
    assert settings.scheduler.name is SchedulerName.cosine
    assert settings.data.source is DataSource.pydoc


@pytest.mark.parametrize(
    "group,expected",
    [
        ("model", ["large", "medium", "small", "tiny"]),
        ("hardware", ["cpu", "cpu_guide", "ddp", "gpu", "gpu_high"]),
        ("optimizer", ["adafactor", "adamw", "muon", "sgd"]),
        ("scheduler", ["constant", "cosine", "linear", "wsd"]),
        ("data", ["pydoc", "stdlib", "text"]),
        ("arch", ["gpt2", "modern"]),
        ("debug", ["fast"]),
    ],
)
def test_every_group_option_composes_and_validates(group, expected):
    assert options(group) == expected
    for option in expected:
        extra = ["data.path=corpus.txt"] if (group, option) == ("data", "text") else []
        settings = settings_for([f"{group}={option}", *extra])
        assert to_plain(settings)[{"arch": "model", "debug": "model"}.get(group, group)]  # they set model keys


@pytest.mark.parametrize("group", ["model", "hardware", "optimizer", "scheduler", "data"])
def test_each_option_sets_exactly_the_keys_of_its_section_that_it_uses(group):
    """conf/ gives every key a value: a key only some options use (the schema names them) is set by
    those, and by no other."""
    for option in options(group):
        composed = compose_config([f"{group}={option}"])[group]
        expected = {
            doc.key.split(".")[1]
            for doc in describe_keys()
            if doc.key.startswith(f"{group}.") and (not doc.options or option in doc.options)
        }
        assert set(composed) == expected, option


def test_hardware_profiles():
    """The guide's gpu and gpu_high tiers; the cpu tier as tuned for quality per minute, and the
    guide's own (4 x 16 for 5 epochs) as cpu_guide."""
    cpu, guide, gpu, high, ddp = (
        settings_for([f"hardware={name}"]) for name in ("cpu", "cpu_guide", "gpu", "gpu_high", "ddp")
    )
    assert (cpu.train.batch_size, cpu.train.grad_accum_steps, cpu.hardware.amp) == (8, 1, False)
    assert (guide.train.batch_size, guide.train.grad_accum_steps, guide.train.epochs) == (4, 16, 5)
    assert guide.hardware == cpu.hardware
    assert (gpu.train.batch_size, gpu.train.grad_accum_steps, gpu.hardware.amp) == (16, 4, True)
    assert (high.train.batch_size, high.train.grad_accum_steps, high.hardware.compile) == (32, 2, True)
    assert (cpu.train.epochs, gpu.train.epochs, high.train.epochs) == (8, 10, 20)
    assert (ddp.train.batch_size, ddp.train.grad_accum_steps, ddp.hardware.nproc, ddp.hardware.amp) == (16, 2, 2, True)


def test_the_hardware_group_alone_sets_the_batch_and_the_epochs():
    """A recipe picks a hardware option instead of setting them, so a hardware option given with a
    recipe decides them; only debug=fast, which shrinks everything, overrides them."""
    batch_keys = ("batch_size", "grad_accum_steps", "epochs")
    for recipe in ("low_end_cpu", "mid_range_gpu", "high_end_gpu"):
        assert not set(OmegaConf.load(CONF_DIR / "experiment" / f"{recipe}.yaml").get("train", {})) & set(batch_keys)
    assert not set(OmegaConf.load(CONF_DIR / "config.yaml").train) & set(batch_keys)
    settings = settings_for(["experiment=low_end_cpu", "hardware=gpu"])
    assert (settings.train.batch_size, settings.train.grad_accum_steps, settings.train.epochs) == (16, 4, 10)


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


def test_load_settings_takes_plain_dicts_that_set_every_key():
    plain = to_plain(settings_for(["model.n_layer=2", "train.max_iters=7"]))
    settings = load_settings(plain)
    assert settings.model.n_layer == 2 and settings.train.max_iters == 7
    # A partial dict would be another run than `python run.py`'s: no key falls back to a default.
    with pytest.raises(ConfigError) as error:
        load_settings({"model": {"n_layer": 2}, "train": {"max_iters": 7}})
    assert str(error.value).startswith("model.vocab_size is not set; give model.vocab_size=VALUE")
    assert "\n" not in str(error.value)


def test_a_key_its_option_uses_must_be_set():
    with pytest.raises(ConfigError, match="optimizer.momentum is not set, and optimizer=sgd needs it"):
        settings_for(["optimizer=sgd", "~optimizer.momentum"])
    with pytest.raises(ConfigError, match="scheduler.decay_fraction is not set, and scheduler=wsd needs it"):
        settings_for(["scheduler=wsd", "~scheduler.decay_fraction"])
    assert settings_for(["optimizer=adamw"]).optimizer.momentum is None  # adamw has no momentum


def test_an_older_checkpoints_settings_resume_in_todays_keys():
    """A checkpoint from before `train.checkpoint_every` was renamed and before the layout keys and
    cautious weight decay existed: its model is GPT-2's layout, its epoch checkpoints keep their
    interval, and the keys it lacks in sections a resumed run may change take this command's value."""
    saved = to_plain(settings_for(["train.checkpoint_every_epochs=2"]))
    saved["train"]["checkpoint_every"] = saved["train"].pop("checkpoint_every_epochs")
    for key in (
        "position",
        "norm",
        "qk_norm",
        "activation",
        "tie_embeddings",
        "zero_init",
        "logit_softcap",
        "value_embeddings",
        "residual_scalars",
        "embed_norm",
    ):
        del saved["model"][key]
    del saved["optimizer"]["cautious_weight_decay"]
    settings = resume_settings(compose_config(["train.max_iters=20"]), saved, ["train.max_iters=20"])
    assert settings.train.checkpoint_every_epochs == 2 and settings.train.max_iters == 20
    assert settings.model.position is Position.learned and settings.model.activation.value == "gelu"
    assert settings.model.value_embeddings is False and settings.optimizer.cautious_weight_decay is False


def test_every_key_has_help_and_every_number_a_range():
    assert all(doc.help for doc in describe_keys())
    ranged = {doc.key for doc in describe_keys() if doc.allowed.startswith(("[", "("))}
    assert {"model.vocab_size", "train.batch_size", "optimizer.lr", "data.val_fraction"} <= ranged


def test_the_conf_readme_key_table_is_the_schemas():
    """conf/README.md's key table is made from the schema and conf/: regenerate it after changing either."""
    readme = (ROOT / "conf" / "README.md").read_text(encoding="utf-8")
    assert key_table() in readme, (
        "conf/README.md's key table differs from the schema; paste the output of "
        "python -c 'from fragment_llm.launch.keys import key_table; print(key_table())'"
    )


def test_conf_comments_leave_ranges_to_the_schema():
    interval = re.compile(r"#.*[\[(]\s*-?[\d.e]+\s*(?:-|,|\.\.)\s*[\d.e]+\s*[\])]")
    for path in CONF_DIR.rglob("*.yaml"):
        for line in path.read_text().splitlines():
            assert not interval.search(line), f"{path.name}: {line}"


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
    cases = {
        "low_end_cpu": (256, "cpu", False, False),
        "mid_range_gpu": (384, "auto", True, False),
        "high_end_gpu": (768, "auto", True, True),
    }
    for recipe, expected in cases.items():
        settings = settings_for([f"experiment={recipe}"])
        assert (
            settings.model.n_embd,
            settings.hardware.device,
            settings.hardware.amp,
            settings.hardware.compile,
        ) == expected, recipe
    # The command line still beats a recipe.
    assert settings_for(["experiment=mid_range_gpu", "model.n_layer=2"]).model.n_layer == 2


@pytest.mark.parametrize("model", options("model"))
def test_debug_makes_any_model_tiny_and_fast(model):
    settings = settings_for([f"model={model}", "hardware=gpu_high", "experiment=debug"])
    assert (settings.model.n_layer, settings.model.n_embd, settings.model.block_size) == (1, 64, 128)
    assert settings.train.max_iters <= 10 and settings.hardware.compile is False


@pytest.mark.parametrize("recipe", options("experiment"))
def test_debug_fast_stacks_on_any_recipe(recipe):
    settings = settings_for([f"experiment={recipe}", "debug=fast"])
    assert (settings.model.n_layer, settings.model.n_embd, settings.model.block_size) == (1, 64, 128)
    assert settings.train.max_iters <= 10 and settings.train.eval_interval == 5 and settings.hardware.compile is False
    assert settings.optimizer.lr == settings_for([f"experiment={recipe}"]).optimizer.lr  # the rest is the recipe's


def test_hparams_search_optuna_minimises_over_lr_weight_decay_warmup_and_width():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hparams_search=optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_.lower() and sweeper.direction == "minimize"
    assert set(sweeper.params) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "scheduler.warmup_fraction",
        "model.n_embd",
    }
    # Every width the search may choose fits every model group's heads.
    widths = re.fullmatch(r"choice\((.*)\)", sweeper.params["model.n_embd"]).group(1).split(",")
    heads = {OmegaConf.load(path).n_head for path in (CONF_DIR / "model").glob("*.yaml")}
    assert len(widths) == 3 and len(heads) >= 4
    assert all(int(width) % n_head == 0 for width in widths for n_head in heads)
    assert cfg.hydra.mode is RunMode.MULTIRUN  # a search sweeps without -m


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


def test_sweep_directories_are_named_after_what_they_sweep():
    assert swept_keys(["optimizer.lr=1e-3,3e-4", "model=tiny,small", "data.path=/a/b.txt"]) == "lr-model"
    assert swept_keys(["train.max_iters=range(2,4)", "hparams_search=optuna"]) == "max_iters-optuna"
    assert swept_keys(["train.max_iters=3"]) == "sweep"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    sweep_dir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["dir"]
    assert sweep_dir == "${paths.outputs}/multirun/${run_stamp:date}/${run_stamp:time}_${swept_keys:}_${run_stamp:id}"
