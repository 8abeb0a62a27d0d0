"""Run directories: their summary.json, the config and overrides Hydra recorded, tables of runs, and
the trained model and tokenizer they hold."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
import yaml
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer

from .checkpoint import load_checkpoint
from .files import write_json
from .model import GPT, GPTConfig
from .tokenizer import TokenizerError, load_tokenizer, tokenizer_hash

SUMMARY_FILE = "summary.json"
CONFIG_RECORD = ".hydra/config.yaml"
OVERRIDES_RECORD = ".hydra/overrides.yaml"
HYDRA_RECORD = ".hydra/hydra.yaml"
# The files a run records itself in, and the kind of value each holds.
RECORDS = {SUMMARY_FILE: dict, CONFIG_RECORD: dict, OVERRIDES_RECORD: list, HYDRA_RECORD: dict}
SWEEP_REPORT_FILE = "sweep.txt"
TOKENIZER_FILE = "tokenizer.json"
FINAL_MODEL = Path("models") / "final_model.pt"
BEST_MODEL = Path("models") / "best_model.pt"  # the lowest validation loss of the run
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RunError(ValueError):
    """A run directory or checkpoint that the tools cannot use: one line naming it and the fix."""


class DamagedRecord(RunError):
    """A record of a run (summary.json, .hydra/*.yaml) that exists but cannot be read."""


def _reason(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if isinstance(error, yaml.MarkedYAMLError) and error.problem and error.problem_mark:
        return f"{error.problem} (line {error.problem_mark.line + 1})"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def load_record(run_dir: Path, name: str) -> dict | list | None:
    """The contents of the record `name` (a key of RECORDS); None when the run has none. Raises
    DamagedRecord, naming the file and why, when it cannot be read."""
    path = Path(run_dir) / name
    try:
        if not path.exists():
            return None
        text = path.read_text(encoding="utf-8")
        # Plain YAML, as Hydra writes it; libyaml's parser, where installed, is ten times faster.
        record = json.loads(text) if name.endswith(".json") else yaml.load(text, Loader=YAML_LOADER)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise DamagedRecord(f"{name}: {_reason(error)}") from None
    if not isinstance(record, RECORDS[name]):
        expected = "a mapping" if RECORDS[name] is dict else "a list"
        raise DamagedRecord(f"{name}: holds a {type(record).__name__} ({str(record)[:40]}), not {expected}")
    return record


def read_record(run_dir: Path, name: str) -> dict | list | None:
    """`load_record`, with a damaged record read as a missing one (`record_damage` says why)."""
    try:
        return load_record(run_dir, name)
    except DamagedRecord:
        return None


def run_records(run_dir: Path) -> tuple[dict[str, Any], str | None]:
    """Every record of the run, each read once (None where missing or damaged), and why some cannot
    be read, one `file: reason` per record (None when all can)."""
    records, problems = {}, []
    for name in RECORDS:
        try:
            records[name] = load_record(run_dir, name)
        except DamagedRecord as error:
            records[name] = None
            problems.append(str(error))
    return records, "; ".join(problems) or None


def record_damage(run_dir: Path) -> str | None:
    """Why some of the run's records cannot be read (see run_records); None when all can."""
    return run_records(run_dir)[1]


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json; empty when it has none or it is damaged."""
    return read_record(run_dir, SUMMARY_FILE) or {}


def update_summary(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the run's summary.json (written atomically) and return the result. A damaged
    summary.json is replaced: the fields being recorded matter more than what could not be read."""
    summary = read_summary(run_dir)
    summary.update(fields)
    write_json(Path(run_dir) / SUMMARY_FILE, summary)
    return summary


RUN_MARKERS = (SUMMARY_FILE, "checkpoints", "models")


def holds_run(path: Path) -> bool:
    """Whether `path` holds a run: what a run writes first (summary.json) or what it saves (checkpoints/,
    models/). Hydra's .hydra/ alone does not count: Hydra writes it before the run starts."""
    return any((Path(path) / marker).exists() for marker in RUN_MARKERS)


def _started_at(run_dir: Path) -> str:
    started = read_summary(run_dir).get("started_at")
    return started if isinstance(started, str) else ""


def find_runs(root: Path) -> list[Path]:
    """Every run directory (one holding a summary.json) below `root`, oldest first."""
    root = Path(root)
    runs = [path.parent for path in root.rglob(SUMMARY_FILE) if ".cache" not in path.parts]
    return sorted(runs, key=lambda run: (_started_at(run), str(run)))


def run_choices(run_dir: Path) -> dict[str, str]:
    """The config group options a run was composed from (model, hardware, ...), from Hydra's record."""
    return _choices(read_record(run_dir, HYDRA_RECORD))


def _choices(hydra_record: Any) -> dict[str, str]:
    choices = hydra_record
    for key in ("hydra", "runtime", "choices"):
        choices = choices.get(key) if isinstance(choices, dict) else None
    if not isinstance(choices, dict):
        return {}
    return {str(key): str(value) for key, value in choices.items()
            if not str(key).startswith("hydra") and value is not None}


def run_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides that made this run (for a sweep job: the job's own, sweep values resolved)."""
    return _overrides(read_record(run_dir, OVERRIDES_RECORD))


def _overrides(overrides_record: Any) -> list[str]:
    return [str(item) for item in overrides_record or []]


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's composed config as flat `section.key` -> value pairs."""
    return flatten(read_record(run_dir, CONFIG_RECORD) or {})


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
    """One row of the runs table: where and when, what it was made from, how it went. A run with a
    damaged record shows what the others hold, with status `damaged` and why in `damaged`."""
    records, damage = run_records(run_dir)
    summary, choices = records[SUMMARY_FILE] or {}, _choices(records[HYDRA_RECORD])
    run_dir = Path(run_dir)
    return {
        "name": str(run_dir.relative_to(root)) if run_dir.is_relative_to(root) else str(run_dir),
        "path": str(run_dir),
        "started_at": summary.get("started_at"),
        "model": choices.get("model"),
        "hardware": choices.get("hardware"),
        "optimizer": choices.get("optimizer"),
        "data": choices.get("data"),
        "overrides": _overrides(records[OVERRIDES_RECORD]),
        "steps": summary.get("steps"),
        "tokens": summary.get("tokens"),
        "best_val_loss": summary.get("best_val_loss"),
        "val_bpb": summary.get("val_bpb"),
        "status": "damaged" if damage else summary.get("status"),
        "wall_time_s": summary.get("wall_time_s"),
        "damaged": damage,
    }


def lookup(run: dict[str, Any], key: str) -> tuple[bool, Any]:
    """A run's value for `key`: a column of the runs table, a summary.json field, or a config key."""
    if key in run:
        return True, run[key]
    for source in (read_summary(Path(run["path"])), run_config(Path(run["path"]))):
        if key in source:
            return True, source[key]
    return False, None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def same_value(actual: Any, wanted: str) -> bool:
    if _is_number(actual):
        try:
            return float(actual) == float(wanted)
        except (ValueError, OverflowError):  # not a number; an integer beyond floats
            return False
    return str(actual).lower() == wanted.lower()


def _text(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if _is_number(value):
        return f"{value:,}"
    return str(value)


def _seconds(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0f}s"
    return f"{value}s" if _is_number(value) else _text(value)


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
            "when": run["started_at"].replace("T", " ")[:16] if isinstance(run["started_at"], str) else "-",
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
            "time": _seconds(run["wall_time_s"]),
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


def checkpoint_model(checkpoint: Path, state: dict[str, Any]) -> GPT:
    """The model a checkpoint describes (`load_checkpoint` has checked its model_config), with its weights."""
    try:
        model = GPT(GPTConfig(**state["model_config"]))
        model.load_state_dict(state["model_state_dict"])
    except (RuntimeError, TypeError, ValueError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 else lines[0]  # torch: a heading, then each problem
        raise RunError(f"{checkpoint} is damaged or not a fragment-llm checkpoint: {reason}; "
                       "load only checkpoints written by fragment-llm") from None
    return model


def run_tokenizer(path: Path) -> Tokenizer:
    """A run's tokenizer.json, which must be a tokenizer with our end-of-text token."""
    try:
        return load_tokenizer(path)
    except TokenizerError as error:
        raise RunError(f"{path} is damaged or not a tokenizer: {error}; restore it from a backup or from the "
                       "tokenizer cache (<paths.cache>/tokenizers/), or train the run again") from None


def load_run(run_dir: Path, checkpoint: Path | None = None, device: str | torch.device = "cpu") -> TrainedModel:
    """The model of `run_dir` (its models/final_model.pt, or `checkpoint`) and its tokenizer.json."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a directory; pass a run directory such as outputs/<date>/<time>_tiny-cpu_ab12")
    tokenizer_path = run_dir / TOKENIZER_FILE
    if not tokenizer_path.exists():
        raise RunError(f"{run_dir} is not a run directory (it has no {TOKENIZER_FILE}); `fragment-llm runs` lists the runs")
    if checkpoint is not None and str(checkpoint) == "best":
        checkpoint = run_dir / BEST_MODEL
        if not checkpoint.is_file():
            raise RunError(f"{run_dir} has no {BEST_MODEL}: the run wrote none yet (it is written at an evaluation that "
                           "improves on the step-0 loss); use its final model (no --checkpoint)")
    if checkpoint is None:
        checkpoint = run_dir / FINAL_MODEL
        if not checkpoint.is_file():
            raise RunError(
                f"{run_dir} has no {FINAL_MODEL} (the run did not finish); "
                f"pass --checkpoint {run_dir / 'checkpoints'}/checkpoint_epoch_N.pt"
            )
    tokenizer = run_tokenizer(tokenizer_path)
    state = load_checkpoint(checkpoint)
    if state.get("tokenizer_hash") not in (None, tokenizer_hash(tokenizer)):
        raise RunError(
            f"{checkpoint} was trained with another tokenizer than {tokenizer_path}; pass the run directory it came from"
        )
    model = checkpoint_model(Path(checkpoint), state)
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise RunError(f"{tokenizer_path} has more tokens than the model of {checkpoint} ({tokenizer.get_vocab_size()}"
                       f" > {model.config.vocab_size}); pass the run directory it came from")
    settings = state.get("config")
    return TrainedModel(model.to(device).eval(), tokenizer, tokenizer_path, Path(checkpoint),
                        settings if isinstance(settings, dict) else {})
