"""Every `python run.py` command in README.md composes and validates as written."""

from __future__ import annotations

import itertools
import re
import shlex

import pytest
from conftest import ROOT, settings_for

from fragment_llm.launch.compose import check_overrides

COMMAND = re.compile(r"^(?:\$ )?python run\.py(.*?)(?:\s+#.*)?$")


def readme_commands() -> list[list[str]]:
    commands = []
    for line in (ROOT / "README.md").read_text().splitlines():
        match = COMMAND.match(line.strip())
        if match:
            commands.append(shlex.split(match.group(1)))
    return commands


def expand_sweep(arguments: list[str]) -> list[list[str]]:
    """`-m key=a,b other=c` -> [[key=a, other=c], [key=b, other=c]]."""
    choices = []
    for argument in arguments:
        key, _, values = argument.partition("=")
        choices.append([f"{key}={value}" for value in values.split(",")])
    return [list(combination) for combination in itertools.product(*choices)]


def test_the_readme_shows_commands():
    assert len(readme_commands()) >= 8


# `--cfg job` and `--help` print instead of training: test_run_cli.test_cfg_job_and_help_show_the_composed_config
TRAINING_COMMANDS = [arguments for arguments in readme_commands() if not {"--cfg", "--help"} & set(arguments)]


@pytest.mark.parametrize("arguments", TRAINING_COMMANDS, ids=lambda args: " ".join(args) or "defaults")
def test_readme_command_composes(arguments):
    expected_error = "model.dropout=1.5" in arguments
    sweep = arguments[:1] == ["-m"]
    check_overrides(arguments[1:] if sweep else arguments)  # run.py's check of keys and options, before Hydra
    for overrides in expand_sweep(arguments[1:]) if sweep else [arguments]:
        if expected_error:
            with pytest.raises(ValueError, match="model.dropout=1.5 is out of range"):
                settings_for(overrides)
        else:
            settings_for(overrides)


def readme_tool_commands() -> list[list[str]]:
    return [
        shlex.split(line.strip().split("#")[0])[1:]
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.strip().startswith("fragment-llm ")
    ]


@pytest.mark.parametrize("arguments", readme_tool_commands(), ids=" ".join)
def test_readme_fragment_llm_command_parses(arguments):
    from fragment_llm.commands.cli import build_parser

    build_parser().parse_args(arguments)  # argparse exits on an unknown command or option
