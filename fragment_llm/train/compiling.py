"""hardware.compile, as a part of the Trainer (train/trainer.py): the model compiled from the start
(true), never (false), or with auto, eager for a few steps that time the run's pace, then compiled
when the rest of the run repays what compiling costs on this machine (the rule and the machine's
record: config/compiling.py). Compiled, auto times the compile and the steps after it, and adds both
to the record, so that the next run of the shape decides on this machine's figures.

`CompiledRun` is a base of `Trainer`: its methods read the trainer's settings, model, data and outputs."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..config.compiling import (
    RECORD_FILE,
    CompileRecord,
    cpu_device_name,
    decide_compile,
    read_record,
    record_compile,
    shape_of,
)
from ..config.load import to_plain
from ..config.schema import CompileMode
from ..files import file_problem
from ..text import plural
from .distributed import all_reduce_sum

log = logging.getLogger(__name__)

# auto times this many eager steps (after the first, which warms up) before it decides, and as many
# compiled steps after compiling, for the speed-up it records.
PACE_STEPS = 3


def device_name(device: torch.device) -> str:
    """The device as the machine's compile record names it."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return cpu_device_name(torch.get_num_threads()) if device.type == "cpu" else device.type


@dataclass
class AutoCompile:
    """What auto has seen so far: its record, and the clock after each step since it last decided."""

    record: Optional[CompileRecord]
    device: str
    shape: str
    stamps: list[float] = field(default_factory=list)
    eager_step: Optional[float] = None  # seconds, once timed
    compile_seconds: Optional[float] = None  # once compiled
    done: bool = False  # decided eager for good, or compiled and recorded

    def step_seconds(self) -> Optional[float]:
        """The median step of the last PACE_STEPS, once that many are timed."""
        if len(self.stamps) <= PACE_STEPS:
            return None
        return statistics.median(after - before for before, after in zip(self.stamps, self.stamps[1:]))


class CompiledRun:
    def first_forward(self, trained: torch.nn.Module) -> torch.nn.Module:
        """The model the run starts with, and what its summary says of compiling."""
        setting = self.settings.hardware.compile
        self.compiled = setting is CompileMode.true
        self.compile_choice: dict[str, Any] = {"setting": setting.value, "compiled": self.compiled}
        self.auto: Optional[AutoCompile] = None
        if setting is CompileMode.auto:
            model = {**to_plain(self.settings)["model"], "vocab_size": self.data.vocab_size}
            shape = shape_of(model, self.settings.train.batch_size, self.precision.name)
            name = device_name(self.device)
            self.auto = AutoCompile(read_record(Path(self.settings.paths.cache), name, shape), name, shape)
        return torch.compile(trained) if self.compiled else trained

    def compile_when_due(self) -> None:
        """After each optimizer step: with auto, time the step, and decide or measure when due."""
        auto = self.auto
        if auto is None or auto.done:
            return
        auto.stamps.append(time.perf_counter())
        if auto.compile_seconds is not None:  # compiled: once its steps are timed, record them
            if (compiled_step := auto.step_seconds()) is not None:
                self.record_compile(1 - compiled_step / auto.eager_step)
            return
        auto.eager_step = auto.step_seconds()
        if auto.eager_step is None and len(auto.stamps) > 1:
            return  # timing the pace
        left = None if self.budget else self.total_steps - self.step
        if auto.eager_step is None and left is not None:  # a run of steps: its length needs its pace
            if left > PACE_STEPS:
                return
            chosen, reason = False, f"{plural(left, 'step')} left: too few to time the run's pace"
        else:
            planned = self.budget - self.train_seconds if left is None else left * auto.eager_step
            chosen, reason = decide_compile(planned, auto.record)
        chosen = bool(all_reduce_sum(torch.tensor(float(chosen and self.ranks.is_main), device=self.device)).item())
        if chosen and auto.eager_step is None:  # a budget worth compiling: time the eager pace, decide again
            return
        self.compile_choice.update(compiled=chosen, reason=reason, step=self.step)
        self.outputs.info("Compile: auto chose %s (%s)", "torch.compile" if chosen else "eager", reason)
        if chosen:
            self.switch_to_compiled()
        else:
            auto.done = True
        self.outputs.update(compile=self.compile_choice)

    def switch_to_compiled(self) -> None:
        """The compiled model from the next step on (it shares the eager one's weights), its training and
        validation graphs compiled now on a batch of random tokens, timed: the first pass compiles, the
        second runs what it compiled."""
        compiled = torch.compile(self.ddp or self.model)
        try:
            first = self.compile_pass(compiled)
            self.auto.compile_seconds = max(0.0, first - self.compile_pass(compiled))
        except Exception as error:  # noqa: BLE001 - auto is a speed-up: where compiling fails, eager still trains
            self.model.train()
            self.model.zero_grad(set_to_none=True)
            self.auto.done = True
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            self.compile_choice.update(compiled=False, error=reason)
            log.warning("Compile: torch.compile failed (%s); the run goes on eager", reason)
            return
        self.forward, self.compiled = compiled, True
        self.auto.stamps = [time.perf_counter()]

    def compile_pass(self, forward: torch.nn.Module) -> float:
        """Seconds of one training forward and backward and one validation forward through `forward`, on
        windows shaped as the run's batches. Weights, gradients and random states stay as they were."""
        started = time.perf_counter()
        batch = (self.settings.train.batch_size, self.model_config.block_size + 1)
        tokens = torch.randint(0, self.data.vocab_size, batch, device=self.device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]  # views of one tensor, as to_device makes them
        devices = [] if self.device.type == "cpu" else [self.device]  # the CPU's generator is always kept
        with torch.random.fork_rng(devices, device_type=self.device.type):
            with self.precision.autocast():
                _, loss = forward(inputs, targets)
            loss.backward()
            self.model.eval()
            with torch.no_grad(), self.precision.autocast():
                forward(inputs, targets)
            self.model.train()
        self.model.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started

    def record_compile(self, speedup: float) -> None:
        """The compile's seconds and the speed-up it gave, to the log, the summary and the machine's record."""
        auto, cache = self.auto, Path(self.settings.paths.cache)
        auto.done = True
        warm = auto.record is not None and auto.record.warm
        self.compile_choice.update(compile_seconds=round(auto.compile_seconds, 2), speedup=round(speedup, 4))
        self.outputs.update(compile=self.compile_choice)
        self.outputs.info(
            "Compile: compiling took %.0fs (%s Inductor cache); a step %.0f%% faster since (recorded in %s)",
            auto.compile_seconds,
            "warm" if warm else "cold",
            100 * speedup,
            cache / RECORD_FILE,
        )
        if self.ranks.is_main:
            try:
                record_compile(cache, auto.device, auto.shape, auto.compile_seconds, warm, speedup)
            except OSError as error:
                log.warning("could not record the compile: %s", file_problem(error, cache / RECORD_FILE))
