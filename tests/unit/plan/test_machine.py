"""A machine's record: read back as written, and any damaged one (not JSON, not a record, NaN or negative
figures, another machine's or version's) timed again and rewritten, never a traceback."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fragment_llm.config.schema import HardwareConfig
from fragment_llm.plan import machine
from fragment_llm.plan.machine import RECORD_VERSION, machine_record, stored_record

NAME = "cpu: a test machine"
GOOD = {
    "machine": NAME,
    "peak_flops": 1.5e11,
    "speed": {"fixed": 0.004, "per_layer": 0.003, "per_flop": 1.7e-11},
    "measured_at": "2026-12-06T12:00:00",
    "version": RECORD_VERSION,
}


def test_a_record_reads_back(tmp_path):
    path = tmp_path / "record.json"
    path.write_text(json.dumps(GOOD))
    record = stored_record(path, NAME)
    assert record is not None and record.speed.per_flop == 1.7e-11 and record.peak_flops == 1.5e11


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[]",
        "null",
        json.dumps({**GOOD, "speed": {"fixed": 0.004}}),
        json.dumps({**GOOD, "speed": {"fixed": "fast", "per_layer": 0, "per_flop": 0}}),
        json.dumps({**GOOD, "speed": {"fixed": -1.0, "per_layer": 0.003, "per_flop": 1.7e-11}}),
        json.dumps({**GOOD, "speed": {"fixed": 0.0, "per_layer": 0.0, "per_flop": 0.0}}),
        json.dumps({**GOOD, "peak_flops": float("nan")}),
        json.dumps({**GOOD, "peak_flops": float("inf")}),
        json.dumps({**GOOD, "machine": "cpu: another"}),
        json.dumps({**GOOD, "version": RECORD_VERSION - 1}),
    ],
)
def test_a_damaged_record_is_not_used(tmp_path, text):
    path = tmp_path / "record.json"
    path.write_text(text)
    assert stored_record(path, NAME) is None
    assert stored_record(tmp_path / "missing.json", NAME) is None


def test_a_damaged_record_is_timed_again_and_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(machine, "TIMED_SECONDS", 0.05)
    hardware, device = HardwareConfig(), torch.device("cpu")
    first = machine_record(hardware, device)
    (path,) = machine.machines_folder().glob("*.json")
    path.write_text('{"machine": "' + first.machine + '", "speed": {"fixed": NaN')  # half-written
    again = machine_record(hardware, device)
    assert again.machine == first.machine and again.speed.seconds_per_step(machine.REFERENCE_SHAPES[0]) > 0
    assert stored_record(path, first.machine) == again  # rewritten whole


def test_a_cache_that_cannot_be_written_only_means_timing_again(tmp_path, monkeypatch):
    blocked = tmp_path / "a file, not a folder"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    monkeypatch.setattr(machine, "TIMED_SECONDS", 0.05)
    record = machine_record(HardwareConfig(), torch.device("cpu"))
    assert record.speed.seconds_per_step(machine.REFERENCE_SHAPES[0]) > 0
    assert blocked.read_text() == ""


def test_a_fifo_or_a_folder_where_the_record_belongs_is_no_record(tmp_path):
    fifo, folder = tmp_path / "fifo.json", tmp_path / "folder.json"
    os.mkfifo(fifo)  # reading it would wait for a writer for ever
    folder.mkdir()
    assert stored_record(fifo, NAME) is None and stored_record(folder, NAME) is None


def test_a_run_off_its_record_says_how_to_time_the_machine_again(tmp_path, monkeypatch):
    # A record timed while the machine was busy predicts too few steps for every later run (one timed beside
    # two sweeps: 0.67-0.79x): a run of half a minute or more that is off by over 1.3x says which file to
    # remove. The record stays (a run evaluating more often than the plan allows for is slower with a true one).
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(machine, "TIMED_SECONDS", 0.05)
    record = machine_record(HardwareConfig(), torch.device("cpu"))
    path = machine.record_path(record.machine)
    advice = machine.record_advice(record.machine, 1.45, 300.0)
    assert advice and "1.45x the steps a second" in advice and f"remove {path}" in advice and path.exists()
    assert machine.record_advice(record.machine, 0.5, 300.0)
    for ratio, seconds in ((1.2, 300.0), (0.8, 300.0), (1.45, 10.0), (float("nan"), 300.0), (0.0, 300.0)):
        assert machine.record_advice(record.machine, ratio, seconds) is None, (ratio, seconds)
    path.unlink()
    assert machine.record_advice(record.machine, 1.45, 300.0) is None  # nothing left to remove
