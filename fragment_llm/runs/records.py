"""What a run directory holds and records about itself: its file names, its summary.json, and the
config, overrides and group choices Hydra recorded in .hydra/; finding runs and describing each."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Optional

import yaml

from ..errors import UserError
from ..files import UnreadableFile, load_json, open_checked, parse_checked, read_checked, write_json
from .paths import RunPaths

# The files a run records itself in, and the kind of value each holds.
RECORDS = {
    RunPaths.SUMMARY: dict,
    RunPaths.CONFIG_RECORD: dict,
    RunPaths.OVERRIDES_RECORD: list,
    RunPaths.HYDRA_RECORD: dict,
}
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# One JSON object per logged step: `step`, `tokens`, `elapsed_s` (training time), then METRIC_NAMES
# (TensorBoard's tags), the val/ ones at the steps with an evaluation.
METRIC_NAMES = ("train/loss", "val/loss", "val/bpb", "lr", "grad_norm", "tokens_per_sec")
# metrics.jsonl grows by a row of about 200 bytes per logged step: a million steps fit. A row is far
# shorter than METRICS_LINE_LIMIT; a longer line is none of ours and is read in pieces that are left out.
METRICS_LIMIT = 1 << 30
METRICS_LINE_LIMIT = 1 << 16
# The status shown for a run whose summary.json says `running` while no process holds its lock.
DIED = "died"


class RunError(UserError, ValueError):
    """A run directory or checkpoint that the tools cannot use: one line naming it and the fix."""


class DamagedRecord(RunError):
    """A record of a run (summary.json, .hydra/*.yaml) that exists but cannot be read."""


def _reason(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if isinstance(error, yaml.MarkedYAMLError) and error.problem and error.problem_mark:
        return f"{error.problem} (line {error.problem_mark.line + 1})"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def load_yaml(text: str) -> Any:
    """Plain YAML, as Hydra writes it. libyaml's parser, where installed, is ten times faster, but it
    refuses the escaped surrogates (`"\\uDCE9"`) that PyYAML writes for a file name that is not UTF-8;
    PyYAML's own parser reads them back."""
    try:
        return yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError:
        return yaml.load(text, Loader=yaml.SafeLoader)


def load_record(run_dir: Path, name: Path) -> dict | list | None:
    """The contents of the record `name` (a key of RECORDS); None when the run has none. Raises
    DamagedRecord, naming the file and why, when it cannot be read."""
    path = Path(run_dir) / name
    try:
        if not path.exists() and not path.is_symlink():  # a broken link or a loop is damage, not absence
            return None
        text = read_checked(path).decode("utf-8")
        record = parse_checked(path, load_json if name.suffix == ".json" else load_yaml, text)
    except UnreadableFile as error:
        raise DamagedRecord(f"{name}: {error.reason}") from None
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise DamagedRecord(f"{name}: {_reason(error)}") from None
    if not isinstance(record, RECORDS[name]):
        expected = "a mapping" if RECORDS[name] is dict else "a list"
        raise DamagedRecord(f"{name}: holds a {type(record).__name__} ({str(record)[:40]}), not {expected}")
    return record


def read_record(run_dir: Path, name: Path) -> dict | list | None:
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
    return read_record(run_dir, RunPaths.SUMMARY) or {}


def current_summary(run_dir: Path) -> dict[str, Any]:
    """read_summary, with the status as it is now (run_status): what the tools show of a run."""
    summary = read_summary(run_dir)
    if "status" in summary:
        summary["status"] = run_status(run_dir, summary["status"])
    return summary


def update_summary(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the run's summary.json (written atomically) and return the result. A damaged
    summary.json is replaced: the fields being recorded matter more than what could not be read."""
    summary = read_summary(run_dir)
    summary.update(fields)
    write_json(Path(run_dir) / RunPaths.SUMMARY, summary)
    return summary


def holds_run(path: Path) -> bool:
    """Whether `path` holds a run (a summary, checkpoints or models)."""
    return RunPaths(path).holds_run()


def _started_at(run_dir: Path) -> str:
    started = read_summary(run_dir).get("started_at")
    return started if isinstance(started, str) else ""


def find_runs(root: Path) -> list[Path]:
    """Every run directory (one holding a summary.json) below `root`, oldest first."""
    root = Path(root)
    runs = [path.parent for path in root.rglob(str(RunPaths.SUMMARY)) if ".cache" not in path.parts]
    return sorted(runs, key=lambda run: (_started_at(run), str(run)))


def run_choices(run_dir: Path) -> dict[str, str]:
    """The config group options a run was composed from (model, hardware, ...), from Hydra's record."""
    return _choices(read_record(run_dir, RunPaths.HYDRA_RECORD))


def _choices(hydra_record: Any) -> dict[str, str]:
    choices = hydra_record
    for key in ("hydra", "runtime", "choices"):
        choices = choices.get(key) if isinstance(choices, dict) else None
    if not isinstance(choices, dict):
        return {}
    return {
        str(key): str(value) for key, value in choices.items() if not str(key).startswith("hydra") and value is not None
    }


def run_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides that made this run (for a sweep job: the job's own, sweep values resolved)."""
    return _overrides(read_record(run_dir, RunPaths.OVERRIDES_RECORD))


def _overrides(overrides_record: Any) -> list[str]:
    return [str(item) for item in overrides_record or []]


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's composed config as flat `section.key` -> value pairs."""
    return flatten(read_record(run_dir, RunPaths.CONFIG_RECORD) or {})


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def reproduce_command(run_dir: Path) -> str:
    """The command that trains this run again, as one run: `fragment-llm train` (run.py's Hydra app,
    there wherever the package is installed, a wheel too) with the run's overrides; a sweep job's hold
    its own values, and the search that chose them (`hparams_search=...`) is left out."""
    overrides = [item for item in run_overrides(run_dir) if not item.startswith("hparams_search=")]
    return shlex.join(["fragment-llm", "train", *overrides])


def describe_run(run_dir: Path, root: Path) -> dict[str, Any]:
    """One row of the runs table: where and when, what it was made from, how it went. A run with a
    damaged record shows what the others hold, with status `damaged` and why in `damaged`."""
    records, damage = run_records(run_dir)
    summary, choices = records[RunPaths.SUMMARY] or {}, _choices(records[RunPaths.HYDRA_RECORD])
    run_dir = Path(run_dir)
    return {
        "name": str(run_dir.relative_to(root)) if run_dir.is_relative_to(root) else str(run_dir),
        "path": str(run_dir),
        "started_at": summary.get("started_at"),
        "model": choices.get("model"),
        "hardware": choices.get("hardware"),
        "optimizer": choices.get("optimizer"),
        "data": choices.get("data"),
        "overrides": _overrides(records[RunPaths.OVERRIDES_RECORD]),
        "steps": summary.get("steps"),
        "tokens": summary.get("tokens"),
        "best_val_loss": summary.get("best_val_loss"),
        "val_bpb": summary.get("val_bpb"),
        "best_val_bpb": summary.get("best_val_bpb"),
        "val_bpb_by_source": summary.get("val_bpb_by_source"),  # a mixture's: source name -> bits per byte
        "status": "damaged" if damage else run_status(run_dir, summary.get("status")),
        "wall_time_s": summary.get("wall_time_s"),
        "in_sweep": _mode(records[RunPaths.HYDRA_RECORD]) == "MULTIRUN",
        "damaged": damage,
    }


def run_status(run_dir: Path, recorded: Any) -> Any:
    """The status summary.json records, but DIED for a `running` run whose lock no process holds: its
    process ended without recording how (killed, out of memory, the machine restarted)."""
    from .claim import is_held  # claim.py imports this module

    return DIED if recorded == "running" and not is_held(run_dir) else recorded


def _mode(hydra_record: Any) -> Any:
    hydra = hydra_record.get("hydra") if isinstance(hydra_record, dict) else None
    return hydra.get("mode") if isinstance(hydra, dict) else None


def failed_to_start(run: dict[str, Any]) -> bool:
    """Whether a `describe_run` row is a single run that failed before its first step (a bad setting,
    a missing corpus: status failed and no steps in its summary), which is clutter once its command
    is fixed. A sweep's job that failed so is one of the sweep's results, not clutter."""
    return run["status"] == "failed" and run["steps"] is None and not run["in_sweep"]


def lookup(run: dict[str, Any], key: str) -> tuple[bool, Any]:
    """A run's value for `key`: a column of the runs table, a summary.json field (one inside a mapping
    dotted: `val_bpb_by_source.pydoc`), or a config key."""
    if key in run:
        return True, run[key]
    summary = read_summary(Path(run["path"]))
    for source in (summary, flatten(summary), run_config(Path(run["path"]))):
        if key in source:
            return True, source[key]
    return False, None


def read_metrics(run_dir: Path) -> Optional[list[dict[str, Any]]]:
    """The rows of the run's metrics.jsonl, in order; None when it has none (a run from before runs kept
    one). A line that is not a row (cut short by a crash) is left out; a metrics.jsonl that is not a
    regular file, or larger than METRICS_LIMIT, is an UnreadableFile."""
    path = Path(run_dir) / RunPaths.METRICS
    if not path.exists() and not path.is_symlink():
        return None
    rows = []
    with open_checked(path, METRICS_LIMIT) as handle:
        while line := handle.readline(METRICS_LINE_LIMIT):
            row = _metrics_row(line)
            if row is not None:
                rows.append(row)
    return rows


def _metrics_row(line: bytes) -> Optional[dict[str, Any]]:
    """A line of metrics.jsonl as a row: an object with an integer `step` and numbers (or null) beside it."""
    try:
        row = load_json(line.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        return None
    if not (isinstance(row, dict) and type(row.get("step")) is int):
        return None
    numbers = all(value is None or type(value) in (int, float) for value in row.values())
    return row if numbers else None
