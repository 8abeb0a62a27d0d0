"""hardware.compile=auto: whether a run is long enough to repay what `torch.compile` costs, and this
machine's record of what compiling a shape cost and saved here.

Torch-free, so that the config floor and `fragment-llm plan` can ask without importing torch:
`decide_compile(planned_seconds, record)` is the rule, `read_record(cache, device, shape)` what this
machine measured (None where it never compiled the shape: the rule then uses PRIOR). The trainer
(train/compiling.py) measures the run's pace, switches to the compiled model and writes the record.
"""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import re
import statistics
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import UserError
from ..files import read_json, write_json
from ..text import duration

RECORD_FILE = "compile.json"  # under paths.cache
RECORD_VERSION = 1
KEPT_SPEEDUPS = 5  # the speed-ups of this many compiled runs are kept; their median is the record's


@dataclass(frozen=True)
class CompileRecord:
    """What compiling one shape costs and saves on one machine."""

    cold_seconds: float  # compiling its training and validation graphs with an empty Inductor cache
    warm_seconds: float  # the same with Inductor's on-disk cache holding them (a second compile of the shape)
    speedup: float  # the share of a training step's time the compiled model saves (0.1: a tenth)
    warm: bool = False  # this machine compiled the shape before, and Inductor's cache is still there
    measured: bool = False  # from this machine's runs; else the prior

    @property
    def cost(self) -> float:
        return self.warm_seconds if self.warm else self.cold_seconds


# What a machine that never compiled a shape assumes, from what compiling cost and saved on a 2-core CPU
# (model=tiny's 4x128, 6x192 and 4x256, AdamW; fragment_llm/train/README.md, "Compiling"): a cold
# compile above the slowest measured (46 s), a warm one above the slowest (3 s) with room for starting
# Inductor's workers, and the smallest speed-up measured (9%), so that a guess errs towards eager.
PRIOR = CompileRecord(cold_seconds=60.0, warm_seconds=10.0, speedup=0.09)


def decide_compile(planned_seconds: float, record: Optional[CompileRecord] = None) -> tuple[bool, str]:
    """Whether to compile a run with `planned_seconds` of training left (eager), and why in a few words:
    compile when the time it saves (the speed-up's share of the run) is more than compiling costs
    (warm when this machine compiled the shape before). On a time budget the same rule holds: a
    compiled run makes more steps in it exactly when the time saved exceeds the time spent compiling."""
    record, planned_seconds = record or PRIOR, max(planned_seconds, 0.0)
    saving = record.speedup * planned_seconds
    compiled = saving > record.cost
    cache = "warm" if record.warm else "cold"
    known = "" if record.measured else ", a prior: not measured on this machine yet"
    reason = (
        f"a {duration(planned_seconds)} run; compiling costs ~{duration(record.cost)} here ({cache} Inductor "
        f"cache{known}) and saves ~{record.speedup:.0%} of the step, ~{duration(saving)}"
    )
    return compiled, reason


# ---- the record: what compiling cost and saved on this machine, by shape ------------------------------
def shape_of(model: Mapping[str, Any], batch_size: int, precision: str) -> str:
    """What decides the compiled graphs: every model key (the layout too), the batch and the precision.
    The trainer passes the model at the corpus's vocabulary; `plan` may pass the configured one."""
    keys = " ".join(f"{name}={value}" for name, value in sorted(model.items()))
    return f"{keys} batch_size={batch_size} precision={precision}"


def cpu_model() -> Optional[str]:
    """The CPU's model as Linux's /proc/cpuinfo names it (its spaces single), None where it does not."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = re.search(r"^model name\s*:(.+)$", text, re.MULTILINE)
    if found is None:
        return None
    return " ".join(found.group(1).split()) or None


def cpu_device_name(threads: int) -> str:
    """A CPU as the record names it: its model and the threads torch uses."""
    return f"cpu: {cpu_model() or 'unknown'}, {threads} threads"


def torch_version() -> str:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def inductor_cache_dir() -> str:
    """Where Inductor keeps compiled code: TORCHINDUCTOR_CACHE_DIR, else its default (as torch names it
    in torch/_inductor/runtime/cache_dir_utils.py, without importing torch)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return os.path.abspath(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    return os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def record_key(device: str, shape: str) -> str:
    return f"{device} | torch {torch_version()} | {shape}"


def _entries(cache: Path) -> dict[str, Any]:
    """The record's entries; an unreadable or foreign record is an empty one (it is a cache)."""
    try:
        record = read_json(Path(cache) / RECORD_FILE)
    except (OSError, ValueError, UserError):
        return {}
    entries = record.get("shapes") if isinstance(record, dict) and record.get("version") == RECORD_VERSION else None
    return entries if isinstance(entries, dict) else {}


def read_record(cache: Path, device: str, shape: str) -> Optional[CompileRecord]:
    """What this machine measured for `shape` on `device` (PRIOR's figures for what it did not), None
    where it never compiled it. Warm when Inductor's cache it compiled into is still there."""
    entry = _entries(cache).get(record_key(device, shape))
    if not isinstance(entry, dict):
        return None
    number = lambda name, default: value if isinstance(value := entry.get(name), (int, float)) else default  # noqa: E731
    speedups = [value for value in entry.get("speedups") or [] if isinstance(value, (int, float))]
    inductor_cache = entry.get("inductor_cache")
    return CompileRecord(
        cold_seconds=number("cold_seconds", PRIOR.cold_seconds),
        warm_seconds=number("warm_seconds", PRIOR.warm_seconds),
        speedup=statistics.median(speedups) if speedups else PRIOR.speedup,
        warm=inductor_cache == inductor_cache_dir() and os.path.isdir(inductor_cache),
        measured=True,
    )


def record_compile(cache: Path, device: str, shape: str, seconds: float, warm: bool, speedup: Optional[float]) -> None:
    """Add one compile to the record: its seconds (as the warm or the cold figure) and the speed-up the
    run measured after it (None: not measured). Written whole (files.write_json); raises OSError."""
    entries = _entries(cache)
    key = record_key(device, shape)
    entry = entries.get(key) if isinstance(entries.get(key), dict) else {}
    speedups = [*(entry.get("speedups") or []), *([round(speedup, 4)] if speedup is not None else [])]
    entries[key] = {
        **entry,
        "warm_seconds" if warm else "cold_seconds": round(seconds, 2),
        "speedups": speedups[-KEPT_SPEEDUPS:],
        "inductor_cache": inductor_cache_dir(),
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    Path(cache).mkdir(parents=True, exist_ok=True)
    write_json(Path(cache) / RECORD_FILE, {"version": RECORD_VERSION, "shapes": entries})
