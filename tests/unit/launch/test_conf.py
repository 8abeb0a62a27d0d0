"""conf/ as Hydra composes it (launch/conf.py): the defaults, every group option and recipe composes and
validates and sets only the keys it uses, the hardware profiles, debug=fast on anything, the Optuna
search, and comments that leave ranges to the schema."""

from __future__ import annotations

import re

import pytest
from helpers import CONF_DIR, settings_for
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf

from fragment_llm.config.load import describe_keys, load_settings, to_plain
from fragment_llm.config.schema import CompileMode, DataSource, OptimizerName, SchedulerName
from fragment_llm.launch import conf
from fragment_llm.plan.planning import with_stand_ins


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
        ("model", ["auto", "large", "medium", "small", "tiny"]),
        ("hardware", ["cpu", "cpu_guide", "ddp", "gpu", "gpu_high"]),
        ("optimizer", ["adafactor", "adamw", "muon", "sgd"]),
        ("scheduler", ["constant", "cosine", "linear", "wsd"]),
        ("data", ["chat", "hf", "mix", "pydoc", "stdlib", "text"]),
        ("arch", ["gpt2", "llama", "modern"]),
        ("debug", ["fast"]),
    ],
)
def test_every_group_option_composes_and_validates(group, expected):
    assert options(group) == expected
    for option in expected:
        extra = {("data", "text"): ["data.path=corpus.txt"], ("data", "hf"): ["data.name=owner/name"]}.get(
            (group, option), []
        )
        if (group, option) == ("model", "auto"):  # its shape is chosen as a run starts (tests/journeys/test_plan.py)
            settings = load_settings(with_stand_ins(conf.compose([f"{group}={option}", *extra])))
        else:
            settings = settings_for([f"{group}={option}", *extra])
        assert to_plain(settings)[{"arch": "model", "debug": "model"}.get(group, group)]  # they set model keys


@pytest.mark.parametrize("group", ["model", "hardware", "optimizer", "scheduler", "data"])
def test_each_option_sets_exactly_the_keys_of_its_section_that_it_uses(group):
    """conf/ gives every key a value: a key only some options use (the schema names them) is set by
    those, and by no other."""
    for option in options(group):
        composed = conf.compose([f"{group}={option}"])[group]
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
    assert (high.train.batch_size, high.train.grad_accum_steps, high.hardware.compile) == (32, 2, CompileMode.true)
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


@pytest.mark.parametrize("recipe", options("experiment"))
def test_every_experiment_recipe_composes_and_validates(recipe):
    settings_for([f"experiment={recipe}"])


def test_experiment_recipes_pick_the_guides_profiles():
    assert options("experiment") == ["chat_demo", "debug", "high_end_gpu", "low_end_cpu", "mid_range_gpu"]
    cases = {
        "low_end_cpu": (256, "cpu", False, CompileMode.false),
        "mid_range_gpu": (384, "auto", True, CompileMode.false),
        "high_end_gpu": (768, "auto", True, CompileMode.true),
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
    assert settings.train.max_iters <= 10 and settings.hardware.compile is CompileMode.false


@pytest.mark.parametrize("recipe", options("experiment"))
def test_debug_fast_stacks_on_any_recipe(recipe):
    settings = settings_for([f"experiment={recipe}", "debug=fast"])
    assert (settings.model.n_layer, settings.model.n_embd, settings.model.block_size) == (1, 64, 128)
    assert settings.train.max_iters <= 10 and settings.train.eval_interval == 5
    assert settings.hardware.compile is CompileMode.false
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
    # model=auto's heads are chosen for the width (plan/rules.py, heads_for).
    heads = {OmegaConf.load(path).n_head for path in (CONF_DIR / "model").glob("*.yaml")} - {None}
    assert len(widths) == 3 and len(heads) >= 4
    assert all(int(width) % n_head == 0 for width in widths for n_head in heads)
    assert cfg.hydra.mode is RunMode.MULTIRUN  # a search sweeps without -m


def test_the_classic_layout_is_one_override_away():
    classic = settings_for(["arch=gpt2"]).model
    assert (classic.position.value, classic.norm.value, classic.activation.value) == ("learned", "layernorm", "gelu")
    assert classic.tie_embeddings and not classic.qk_norm and classic.logit_softcap == 0


def test_conf_comments_leave_ranges_to_the_schema():
    interval = re.compile(r"#.*[\[(]\s*-?[\d.e]+\s*(?:-|,|\.\.)\s*[\d.e]+\s*[\])]")
    for path in CONF_DIR.rglob("*.yaml"):
        for line in path.read_text().splitlines():
            assert not interval.search(line), f"{path.name}: {line}"
