"""The package reads top-down: each package imports only packages on its floor or below (every import
counted, those inside functions too), and the floors that the browsing commands stand on import no torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "fragment_llm"
# Bottom floor first: the shared leaves, then each package (see fragment_llm/README.md).
FLOORS = [
    {"errors", "files", "console", "signals", "text"},
    {"config"},
    {"data"},
    {"model"},
    {"runs"},
    {"train"},
    {"export", "plan"},
    {"serve"},
    {"launch"},
    {"commands", "__main__", "__init__"},
]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}
# What `fragment-llm runs`, `show`, `compare` and `plot` import: none of it may import torch.
TORCH_FREE = {"errors", "files", "console", "signals", "text", "config", "runs"}


def modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if "conf" not in path.relative_to(PACKAGE).parts)


def part(path: Path) -> str:
    """The leaf module or package a file belongs to: fragment_llm/train/x.py -> train, errors.py -> errors."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(path: Path) -> list[tuple[str, int]]:
    return imported_by(path.read_text(encoding="utf-8"), ["fragment_llm", *path.relative_to(PACKAGE).parts[:-1]])


def imported_by(source: str, package: list[str]) -> list[tuple[str, int]]:
    """Every (absolute module name, line) that `source`, a module of `package`, imports."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            if node.module:
                names.append((module, node.lineno))
            else:  # `from . import x`: x is a module of that package
                names += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return names


def floor_of(name: str) -> int:
    return FLOOR[name.split(".")[1]]


def test_every_module_is_on_a_floor():
    assert {part(path) for path in modules()} <= set(FLOOR)


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_imports_a_floor_above_its_own(path):
    own = FLOOR[part(path)]
    for name, line in imported(path):
        if name.split(".")[0] != "fragment_llm" or name == "fragment_llm":
            continue
        assert floor_of(name) <= own, f"{path.relative_to(ROOT)}:{line} imports {name}, a floor above its own"


@pytest.mark.parametrize(
    "path", [path for path in modules() if part(path) in TORCH_FREE], ids=lambda path: str(path.relative_to(PACKAGE))
)
def test_the_floors_under_browsing_import_no_torch(path):
    for name, line in imported(path):
        assert name.split(".")[0] not in {"torch", "numpy", "tokenizers"}, f"{path.relative_to(ROOT)}:{line}: {name}"


def test_the_reader_resolves_relative_imports_in_functions_too():
    source = "from ..train.trainer import Trainer\nfrom . import corpus\n\ndef f():\n    from ...commands import main\n"
    names = [name for name, _ in imported_by(source, ["fragment_llm", "data", "sub"])]
    assert names == ["fragment_llm.data.train.trainer", "fragment_llm.data.sub.corpus", "fragment_llm.commands"]
    source = "from ..train.trainer import Trainer\n"
    assert [floor_of(name) for name, _ in imported_by(source, ["fragment_llm", "data"])] == [FLOOR["train"]]
