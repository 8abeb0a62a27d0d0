"""The prepared GPU check (tests/gpu/check.sh, check.py) end to end on a CPU, so that it cannot rot between
the rare calls on a GPU: its dry run takes every phase with tiny shapes and writes check.json, check.log
and junit.xml. nanoGPT's part is played by a stand-in that checks the data and the shape the check gives
it and prints its iterations as nanoGPT's train.py does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

from gpu.check import BENCHES

pytestmark = pytest.mark.slow

NANOGPT_STAND_IN = """
import json, os, pickle, sys
import numpy as np
args = dict(argument[2:].split("=", 1) for argument in sys.argv[1:])
folder = os.path.join("data", args["dataset"])
train = np.memmap(os.path.join(folder, "train.bin"), dtype=np.uint16, mode="r")
with open(os.path.join(folder, "meta.pkl"), "rb") as handle:
    vocab_size = pickle.load(handle)["vocab_size"]
assert len(train) > int(args["block_size"]) and int(train.max()) < vocab_size and vocab_size % 64 == 0
for iteration in range(int(args["max_iters"]) + 1):
    print(f"iter {iteration}: loss 6.2000, time 20.00ms, mfu -100.00%")
with open("arguments.json", "w") as handle:
    json.dump(args, handle)
"""


def test_the_gpu_checks_dry_run_takes_every_phase_on_a_cpu(tmp_path):
    nanogpt, out = tmp_path / "nanogpt", tmp_path / "out"
    nanogpt.mkdir()
    for name, text in {"train.py": NANOGPT_STAND_IN, "model.py": "", "configurator.py": ""}.items():
        (nanogpt / name).write_text(text)
    arguments = ["--cpu-dry-run", "--nanogpt", str(nanogpt), "--budget", "3000", "--timeout-scale", "10"]
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "tests" / "gpu" / "check.sh"), str(out), *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=3300,
    )
    assert result.returncode == 0, result.stdout[-5000:]
    assert sorted(path.name for path in out.iterdir()) == ["check.json", "check.log", "junit.xml"]
    check = json.loads((out / "check.json").read_text())
    benches = {f"bench-{name}": "ok" for name in BENCHES}
    expected = {"install": "skipped", "env": "ok", "tests": "ok", "prepare": "ok", "nanogpt": "ok", **benches}
    assert {phase["name"]: phase["status"] for phase in check["phases"]} == expected
    assert check["env"]["device"] == "cpu" and check["env"]["fp32_peak_flops"] > 0
    assert check["tests"]["skipped"] > 0 and check["tests"]["passed"] == 0 and check["tests"]["failed"] == []
    figures = check["figures"]
    assert all(figures[name]["tokens_per_sec"] > 0 and figures[name]["precision"] == "fp32" for name in BENCHES)
    # nanoGPT trained high_end_gpu's shape (shrunk by debug=fast) on its tokens, as the bench did.
    given = json.loads((nanogpt / "arguments.json").read_text())
    bench = check["bench"]["high_end_gpu"]["config"]
    assert f"block {given['block_size']}" in bench["model"] and f"{given['n_embd']} wide" in bench["model"]
    assert bench["batch"] == f"{given['batch_size']} x accum {given['gradient_accumulation_steps']}"
    tokens = int(given["batch_size"]) * int(given["gradient_accumulation_steps"]) * int(given["block_size"])
    assert check["nanogpt"]["tokens_per_sec"] == pytest.approx(tokens / 0.020)
    ratio = figures["high_end_gpu"]["tokens_per_sec"] / check["nanogpt"]["tokens_per_sec"]
    assert figures["ratios"]["ours_over_nanogpt"] == pytest.approx(ratio)
    assert "ours_over_nanogpt" in result.stdout and "nanogpt" in (out / "check.log").read_text()
