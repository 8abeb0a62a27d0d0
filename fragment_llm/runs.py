"""Run directories: their summary.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .files import write_json

SUMMARY_FILE = "summary.json"


def read_summary(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def update_summary(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the run's summary.json (written atomically) and return the result."""
    summary = read_summary(run_dir)
    summary.update(fields)
    write_json(Path(run_dir) / SUMMARY_FILE, summary)
    return summary


def find_runs(root: Path) -> list[Path]:
    """Every run directory (one holding a summary.json) below `root`, oldest first."""
    root = Path(root)
    runs = [path.parent for path in root.rglob(SUMMARY_FILE) if ".cache" not in path.parts]
    return sorted(runs, key=lambda run: read_summary(run).get("started_at", ""))


def run_choices(run_dir: Path) -> dict[str, str]:
    """The config group options a run was composed from (model, hardware, ...), from Hydra's record."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not path.exists():
        return {}
    choices = OmegaConf.load(path).hydra.runtime.choices
    return {key: str(value) for key, value in choices.items() if not key.startswith("hydra")}
