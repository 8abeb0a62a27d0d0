"""The docs say what is true: every training command in README.md and in the READMEs beside the code
(conf/, fragment_llm/, tests/) composes and validates as written, every other `fragment-llm` command
parses, every relative link leads to a file and heading that exist, every `from fragment_llm... import`
in their Python imports, and README stays a five-minute read."""

from __future__ import annotations

import ast
import importlib
import itertools
import re
import shlex
from pathlib import Path

import pytest
from helpers import ROOT, settings_for

from fragment_llm.config.load import load_settings
from fragment_llm.config.schema import ConfigError
from fragment_llm.launch.compose import check_overrides, with_implied_choices
from fragment_llm.launch.conf import compose
from fragment_llm.launch.guide_flags import check_guide_flags, in_keys
from fragment_llm.plan.planning import with_stand_ins

ROOT = ROOT.resolve()
README = ROOT / "README.md"
README_MAX_LINES = 300
# Training from a checkout, or from an installed package: the same Hydra app, the same arguments.
COMMAND = re.compile(r"^(?:\$ )?(?:python run\.py|fragment-llm train|python -m fragment_llm train)(.*?)(?:\s+#.*)?$")
FENCE = re.compile(r"^```(\w*)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def documents() -> list[Path]:
    """README.md and every Markdown file under conf/, fragment_llm/ and tests/, once each (the package's
    conf/ is a link to the top-level one)."""
    found = {README}
    for folder in ("conf", "fragment_llm", "tests"):
        for path in (ROOT / folder).rglob("*.md"):
            if not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(ROOT).parts):
                found.add(path.resolve())
    return sorted(found)


def prose_and_code(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """A document's lines outside code fences, and its fenced blocks as (language, text)."""
    prose, blocks, block = [], [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        fence = FENCE.match(line.strip())
        if fence and block is None:
            language, block = fence.group(1), []
        elif fence:
            blocks.append((language, "\n".join(block)))
            block = None
        elif block is None:
            prose.append(line)
        else:
            block.append(line)
    return prose, blocks


def training_commands(paths: list[Path]) -> list[list[str]]:
    commands = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
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


def test_the_docs_are_found_and_readme_shows_commands():
    assert {README, ROOT / "conf" / "README.md", ROOT / "fragment_llm" / "README.md"} <= set(documents())
    assert len(training_commands([README])) >= 8


def test_readme_is_a_five_minute_read():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move depth beside the code it describes"


# `--cfg job` and `--help` print instead of training: test_cfg_job_and_help_show_the_composed_config in
# journeys/test_train.py
TRAINING_COMMANDS = [
    arguments
    for arguments in dict.fromkeys(map(tuple, training_commands(documents())))  # each once, in every doc
    if not {"--cfg", "--help"} & set(arguments)
]


@pytest.mark.parametrize("arguments", TRAINING_COMMANDS, ids=lambda args: " ".join(args) or "defaults")
def test_doc_command_composes(arguments):
    arguments = with_implied_choices(list(arguments))  # as run.py does first: data.path=FILE alone is data=text
    if in_keys(arguments)[1]:  # the training guide's flags, shown refused: the line says the keys to write
        with pytest.raises(ConfigError, match="not the training guide's flags"):
            check_guide_flags(arguments)
        arguments = in_keys(arguments)[0]
    expected_error = "model.dropout=1.5" in arguments
    sweep = arguments[:1] == ["-m"]
    check_overrides(arguments[1:] if sweep else arguments)  # run.py's check of keys and options, before Hydra
    for overrides in expand_sweep(arguments[1:]) if sweep else [arguments]:
        if expected_error:
            with pytest.raises(ValueError, match="model.dropout=1.5 is out of range"):
                settings_for(overrides)
        elif "model=auto" in overrides:  # its shape is chosen as the run starts (tests/journeys/test_plan.py)
            load_settings(with_stand_ins(compose(overrides)))
        else:
            settings_for(overrides)


def tool_commands() -> list[list[str]]:
    commands = {}
    for path in documents():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("fragment-llm "):
                commands[line.strip().split("#")[0].strip()] = None
    return [shlex.split(line)[1:] for line in commands]


@pytest.mark.parametrize("arguments", tool_commands(), ids=" ".join)
def test_doc_fragment_llm_command_parses(arguments):
    from fragment_llm.commands.main import build_parser

    build_parser().parse_args(arguments)  # argparse exits on an unknown command or option


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation but `-` and `_` dropped,
    spaces made hyphens, a repeated one numbered."""
    anchors: set[str] = set()
    for line in prose_and_code(path)[0]:
        if re.match(r"#{1,6} ", line):
            slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            numbered = slug
            for number in itertools.count(1):
                if numbered not in anchors:
                    break
                numbered = f"{slug}-{number}"
            anchors.add(numbered)
    return anchors


@pytest.mark.parametrize("path", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_doc_links_lead_somewhere(path):
    broken = []
    for target in LINK.findall("\n".join(prose_and_code(path)[0])):  # a link's text may span lines
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists() or (anchor and anchor not in github_anchors(linked)):
            broken.append(target)
    assert not broken, f"{path.name} links to what does not exist: {broken}"


@pytest.mark.parametrize("path", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_doc_python_imports_exist(path):
    for language, block in prose_and_code(path)[1]:
        for node in ast.walk(ast.parse(block)) if language == "python" else ():
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fragment_llm"):
                module = importlib.import_module(node.module)
                assert all(hasattr(module, alias.name) for alias in node.names), ast.unparse(node)
