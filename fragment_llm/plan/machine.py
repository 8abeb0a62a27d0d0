"""How fast this machine trains a shape: a few timed optimizer steps of three reference shapes, fitted
as seconds per step = fixed + per layer + per FLOP, and the matmul peak, cached per machine (its device,
threads, precision and torch version) under `paths.cache`, so that only the first plan on a machine pays
the few seconds it takes."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from ..config.compiling import cpu_model
from ..config.schema import HardwareConfig
from ..console import error_console
from ..errors import UserError
from ..files import read_json, write_text
from ..model.gpt import GPT, GPTConfig
from ..train.hardware import Precision, peak_matmul_flops
from .rules import Shape, Speed

log = logging.getLogger(__name__)

# From one narrow layer to six wide ones: they span the shapes the rules choose among on a CPU, so
# that the fitted step time holds between them (a few seconds in all).
REFERENCE_SHAPES = (
    Shape(n_layer=1, n_embd=64, n_head=2, block_size=128, vocab_size=1024, batch_size=8),
    Shape(n_layer=4, n_embd=64, n_head=2, block_size=128, vocab_size=1024, batch_size=8),
    Shape(n_layer=4, n_embd=128, n_head=4, block_size=128, vocab_size=1024, batch_size=8),
    Shape(n_layer=2, n_embd=256, n_head=8, block_size=128, vocab_size=2048, batch_size=8),
    Shape(n_layer=6, n_embd=256, n_head=8, block_size=128, vocab_size=2048, batch_size=8),
)
TIMED_SECONDS = 0.5  # per reference shape, after two untimed steps
RECORD_VERSION = 2


@dataclass(frozen=True)
class MachineRecord:
    """What a plan knows of a machine: its name, the matmul peak and the fitted step time."""

    machine: str
    peak_flops: float
    speed: Speed
    measured_at: str
    version: int = RECORD_VERSION


def machine_name(device: torch.device, threads: int, precision: str) -> str:
    """The record's key: what the speed depends on (the processor or GPU, torch's threads, the precision, torch)."""
    if device.type == "cuda":
        chip = torch.cuda.get_device_name(device)
    else:
        chip = cpu_model() or platform.processor() or platform.machine()
    return f"{device.type} {chip}, {threads} thread{'s' * (threads != 1)}, {precision}, torch {torch.__version__}"


def machines_folder() -> Path:
    """Where machine records live: the user's cache (XDG_CACHE_HOME, else ~/.cache), shared by every
    project and test on the machine, as a machine's speed is its own and not a corpus's."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fragment-llm" / "machines"


# A planned run whose steps came this much faster or slower than its machine record predicted shows the
# record wrong for the machine as it is (timed while other work ran: a 1-thread record timed beside two
# sweeps predicted 0.67-0.79x the steps its runs made), or the run unlike the plan (evaluating more often
# than EVALUATION_SHARE allows for, compiled). Runs shorter than RECORD_CHECK_SECONDS are left out: their
# first steps and evaluations weigh too much.
RECORD_OFF_BY = 1.3
RECORD_CHECK_SECONDS = 30.0


def record_path(name: str) -> Path:
    return machines_folder() / (_file_name(name) + ".json")


def machine_record(hardware: HardwareConfig, device: torch.device) -> MachineRecord:
    """This machine's record: read from `machines_folder()`, or measured now (a few seconds) and written
    there (a folder that cannot be written only means measuring again next time)."""
    precision = Precision(hardware, device)
    name = machine_name(device, torch.get_num_threads(), precision.name)
    path = record_path(name)
    stored = stored_record(path, name)
    if stored is not None:
        return stored
    # Said now, on the terminal: a run's log lines wait until its directory is claimed, after this.
    error_console.print(f"Plan: timing this machine once ({len(REFERENCE_SHAPES)} shapes, a few seconds) ...")
    record = MachineRecord(
        machine=name,
        peak_flops=peak_matmul_flops(precision.dtype or torch.float32, device),
        speed=Speed.fitted([(shape, seconds_per_step(shape, device, precision)) for shape in REFERENCE_SHAPES]),
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    log.info("Plan: timed this machine (%s); kept in %s", name, path)
    try:
        write_text(path, json.dumps(asdict(record), indent=1))
    except OSError as error:
        log.debug("machine record not kept: %s", error)
    return record


def record_advice(name: str, ratio: float, train_seconds: float) -> Optional[str]:
    """After a planned run on machine `name` that made `ratio` times the steps a second its record predicted,
    in `train_seconds` of training: where the ratio is off by more than RECORD_OFF_BY, what to do about it
    (remove the record, for the next plan to time the machine again), else None. The record is not removed
    here: a run that evaluated more often than the plan allows for is slower with a true record."""
    if train_seconds < RECORD_CHECK_SECONDS or not math.isfinite(ratio) or ratio <= 0:
        return None
    if 1 / RECORD_OFF_BY <= ratio <= RECORD_OFF_BY:
        return None
    path = record_path(name)
    stored = stored_record(path, name)
    if stored is None:  # removed, or timed again since the plan
        return None
    return (
        f"Plan: this run made {ratio:.2f}x the steps a second that this machine's record predicted (timed "
        f"{stored.measured_at}): other work on the machine, then or during this run, makes the two differ; if it "
        f"was busy when timed, remove {path} for the next plan to time it again (evaluating more often than "
        "every 200 steps also slows a run against its plan)"
    )


def stored_record(path: Path, name: str) -> Optional[MachineRecord]:
    """The record kept at `path` for machine `name`; None when there is none, or it is for another version,
    or damaged in any way (then the machine is timed again and the record rewritten)."""
    try:
        stored = read_json(path)  # a regular file of bounded size (a FIFO there would block), and JSON
        speed = Speed(**{key: float(stored["speed"][key]) for key in ("fixed", "per_layer", "per_flop")})
        record = MachineRecord(stored["machine"], float(stored["peak_flops"]), speed, str(stored["measured_at"]))
        valid = stored.get("version") == RECORD_VERSION and record.machine == name
    except (OSError, ValueError, UserError, TypeError, KeyError, AttributeError):  # unreadable, not JSON, not a record
        return None
    figures = (record.peak_flops, speed.fixed, speed.per_layer, speed.per_flop)
    if (
        not valid
        or not all(math.isfinite(f) and f >= 0 for f in figures)
        or speed.seconds_per_step(REFERENCE_SHAPES[0]) <= 0
    ):
        return None
    return record


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")[:150]


def seconds_per_step(shape: Shape, device: torch.device, precision: Precision) -> float:
    """The mean seconds of an optimizer step of `shape` (modern layout, AdamW), after two untimed steps."""
    config = GPTConfig(
        vocab_size=shape.vocab_size,
        block_size=shape.block_size,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        position="rope",
        activation="relu2",
        value_embeddings=True,
    )
    generator = torch.Generator().manual_seed(0)
    model = GPT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, shape.vocab_size, (shape.batch_size, shape.block_size + 1), generator=generator)
    inputs, targets = tokens[:, :-1].to(device), tokens[:, 1:].to(device)

    def step() -> None:
        with precision.autocast():
            _, loss = model(inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        step()
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < TIMED_SECONDS:
        step()
        steps += 1
    return (time.perf_counter() - started) / steps
