"""conf/ as Hydra composes it: where it is, composing it, and the groups and options it offers."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# conf/ ships inside the package (an installed wheel has no checkout around it); in the checkout,
# fragment_llm/conf links to the repository's conf/.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str]) -> DictConfig:
    """conf/ composed as `python run.py OVERRIDES` composes it, without its `hydra` section."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def group_options(group: str) -> set[str]:
    return {path.stem for path in (CONF_DIR / group).glob("*.yaml")}


def config_groups() -> set[str]:
    return {folder.name for folder in CONF_DIR.iterdir() if folder.is_dir() and folder.name != "hydra"}


def chosen_defaults(path: Path = CONF_DIR / "config.yaml", prefix: str = "") -> dict[str, str]:
    """The group options a defaults list picks (conf/config.yaml's, or with `prefix="override /"` a
    recipe's), leaving out the groups it leaves empty (null)."""
    chosen = {}
    for entry in OmegaConf.load(path).get("defaults") or []:
        if isinstance(entry, DictConfig):
            for key, option in entry.items():
                if key.startswith(prefix) and option is not None and "/" not in key.removeprefix(prefix):
                    chosen[key.removeprefix(prefix)] = str(option)
    return chosen


def chosen_options(group: str, overrides: list) -> list[str]:
    """The options of `group` that parsed command-line `overrides` pick: its own `group=...` (every value
    of a sweep), else the recipe's (`experiment=...` with `override /group: ...`), else conf/config.yaml's
    default."""
    for override in overrides:
        if override.get_key_element().lstrip("+") == group and not override.is_delete():
            values = override.sweep_string_iterator() if override.is_choice_sweep() else [override.value()]
            return [str(value) for value in values if (CONF_DIR / group / f"{value}.yaml").is_file()]
    for override in overrides:
        recipe = CONF_DIR / "experiment" / f"{override.value()}.yaml"
        if override.get_key_element() == "experiment" and not override.is_sweep_override() and recipe.is_file():
            chosen = chosen_defaults(recipe, "override /").get(group)
            if chosen:
                return [chosen]
    chosen = chosen_defaults().get(group)
    return [chosen] if chosen else []
