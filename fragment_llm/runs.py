"""Run directories: their summary.json, the config and overrides Hydra recorded, tables of runs, and
the trained model and tokenizer they hold."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer

from .checkpoint import load_checkpoint
from .files import write_json
from .model import GPT, GPTConfig
from .tokenizer import load_tokenizer, tokenizer_hash

SUMMARY_FILE = "summary.json"
SWEEP_REPORT_FILE = "sweep.txt"
TOKENIZER_FILE = "tokenizer.json"
FINAL_MODEL = Path("models") / "final_model.pt"


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
    return sorted(runs, key=lambda run: (read_summary(run).get("started_at", ""), str(run)))


def _hydra_record(run_dir: Path, name: str):
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / name
    return OmegaConf.load(path) if path.exists() else None


def run_choices(run_dir: Path) -> dict[str, str]:
    """The config group options a run was composed from (model, hardware, ...), from Hydra's record."""
    record = _hydra_record(run_dir, "hydra.yaml")
    if record is None:
        return {}
    choices = record.hydra.runtime.choices
    return {key: str(value) for key, value in choices.items() if not key.startswith("hydra") and value is not None}


def run_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides that made this run (for a sweep job: the job's own, sweep values resolved)."""
    record = _hydra_record(run_dir, "overrides.yaml")
    return [] if record is None else [str(item) for item in record]


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's composed config as flat `section.key` -> value pairs."""
    from omegaconf import OmegaConf

    record = _hydra_record(run_dir, "config.yaml")
    return {} if record is None else flatten(OmegaConf.to_container(record, resolve=False))


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def reproduce_command(run_dir: Path) -> str:
    """The command that trains this run again, as one run: a sweep job's overrides hold its own values,
    and the search that chose them (`hparams_search=...`) is left out."""
    overrides = [item for item in run_overrides(run_dir) if not item.startswith("hparams_search=")]
    return " ".join(["python run.py", *(shlex.quote(item) for item in overrides)])


def describe_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One row of the runs table: where and when, what it was made from, how it went."""
    summary, choices = read_summary(run_dir), run_choices(run_dir)
    run_dir = Path(run_dir)
    return {
        "name": str(run_dir.relative_to(root)) if run_dir.is_relative_to(root) else str(run_dir),
        "path": str(run_dir),
        "started_at": summary.get("started_at"),
        "model": choices.get("model"),
        "hardware": choices.get("hardware"),
        "optimizer": choices.get("optimizer"),
        "data": choices.get("data"),
        "overrides": run_overrides(run_dir),
        "steps": summary.get("steps"),
        "tokens": summary.get("tokens"),
        "best_val_loss": summary.get("best_val_loss"),
        "val_bpb": summary.get("val_bpb"),
        "status": summary.get("status"),
        "wall_time_s": summary.get("wall_time_s"),
    }


def lookup(run: dict[str, Any], key: str) -> tuple[bool, Any]:
    """A run's value for `key`: a column of the runs table, a summary.json field, or a config key."""
    if key in run:
        return True, run[key]
    for source in (read_summary(Path(run["path"])), run_config(Path(run["path"]))):
        if key in source:
            return True, source[key]
    return False, None


def same_value(actual: Any, wanted: str) -> bool:
    if isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:
            return float(actual) == float(wanted)
        except ValueError:
            return False
    return str(actual).lower() == wanted.lower()


def _text(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


RUNS_COLUMNS = ("when", "run", "model", "hardware", "optimizer", "overrides", "steps", "tokens", "best val loss",
                "bits/byte", "status", "time")
# A sweep's jobs share the rest; whatever a sweep varies shows in their overrides.
SWEEP_COLUMNS = ("run", "overrides", "steps", "best val loss", "bits/byte", "status", "time")


def runs_table(runs: Iterable[dict[str, Any]], title: str, columns: tuple[str, ...] = RUNS_COLUMNS,
               overrides_shown: Optional[set[str]] = None) -> Table:
    """The rich table of `fragment-llm runs` and of a sweep's report. `overrides_shown` limits the
    overrides column to those items (a sweep shows only what varies between its jobs)."""
    table = Table(title=title)
    for column in columns:
        numeric = column in ("steps", "tokens", "best val loss", "bits/byte", "time")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold")
    for run in runs:
        overrides = [item for item in run["overrides"] if overrides_shown is None or item in overrides_shown]
        cells = {
            "when": (run["started_at"] or "-").replace("T", " ")[:16],
            "run": run["name"],
            "model": _text(run["model"]),
            "hardware": _text(run["hardware"]),
            "optimizer": _text(run["optimizer"]),
            "overrides": "\n".join(overrides) or "-",  # one per line: long values fold less
            "steps": _text(run["steps"]),
            "tokens": _text(run["tokens"]),
            "best val loss": _text(run["best_val_loss"]),
            "bits/byte": _text(run["val_bpb"], 3),
            "status": _text(run["status"]),
            "time": "-" if run["wall_time_s"] is None else f"{run['wall_time_s']:.0f}s",
        }
        table.add_row(*(cells[column] for column in columns))
    return table


def varying_overrides(runs: list[dict[str, Any]]) -> set[str]:
    """The override items not shared by every run: what a sweep changed from job to job."""
    every = [set(run["overrides"]) for run in runs]
    shared = set.intersection(*every) if every else set()
    return set.union(set(), *every) - shared if len(every) > 1 else set.union(set(), *every)


def sweep_report(sweep_dir: Path) -> Table:
    """A table of a sweep's jobs, in job order, showing the overrides that vary between them."""
    sweep_dir = Path(sweep_dir)
    jobs = [describe_run(run, sweep_dir) for run in find_runs(sweep_dir)]
    jobs.sort(key=lambda job: (len(job["name"]), job["name"]))  # "2" before "10"
    return runs_table(jobs, f"Sweep {sweep_dir}", SWEEP_COLUMNS, overrides_shown=varying_overrides(jobs))


def write_sweep_report(sweep_dir: Path) -> Path:
    """Print the sweep's table and write the same table, as plain text, to <sweep>/sweep.txt."""
    from .console import console

    table = sweep_report(sweep_dir)
    console.print(table)
    path = Path(sweep_dir) / SWEEP_REPORT_FILE
    with open(path, "w", encoding="utf-8") as handle:
        Console(file=handle, width=max(console.width, 160), color_system=None, highlight=False).print(table)
    return path


class RunError(ValueError):
    """A run directory or checkpoint that the tools cannot use: one line naming it and the fix."""


@dataclass
class TrainedModel:
    """A run's model in eval mode, with the tokenizer it was trained with and its training settings."""

    model: GPT
    tokenizer: Tokenizer
    tokenizer_path: Path
    checkpoint_path: Path
    settings: dict[str, Any]

    @property
    def config(self) -> GPTConfig:
        return self.model.config


def load_run(run_dir: Path, checkpoint: Path | None = None, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of `run_dir` (its models/final_model.pt, or `checkpoint`) and its tokenizer.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a directory; pass a run directory such as outputs/<date>/<time>_tiny-cpu_ab12")
    tokenizer_path = run_dir / TOKENIZER_FILE
    if not tokenizer_path.is_file():
        raise RunError(f"{run_dir} is not a run directory (it has no {TOKENIZER_FILE}); `fragment-llm runs` lists the runs")
    if checkpoint is None:
        checkpoint = run_dir / FINAL_MODEL
        if not checkpoint.is_file():
            raise RunError(
                f"{run_dir} has no {FINAL_MODEL} (the run did not finish); "
                f"pass --checkpoint {run_dir / 'checkpoints'}/checkpoint_epoch_N.pt"
            )
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or not {"model_config", "model_state_dict"} <= state.keys():
        raise RunError(f"{checkpoint} is not a fragment-llm checkpoint (no model_config or model_state_dict)")
    tokenizer = load_tokenizer(tokenizer_path)
    if state.get("tokenizer_hash") not in (None, tokenizer_hash(tokenizer)):
        raise RunError(
            f"{checkpoint} was trained with another tokenizer than {tokenizer_path}; pass the run directory it came from"
        )
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model_state_dict"])
    return TrainedModel(model.to(device).eval(), tokenizer, tokenizer_path, Path(checkpoint), state.get("config", {}))
