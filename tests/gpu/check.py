"""The prepared GPU check (tests/gpu/README.md): one call on a lent GPU machine runs every phase below,
each under its own timeout, within one overall budget, and writes what it found to OUTDIR as it goes:
check.json (every figure, each phase's status), check.log (every phase's output) and junit.xml (the GPU
tests). A phase that fails or hangs is recorded and the next one runs.

    python tests/gpu/check.py run OUTDIR                # on the GPU machine (tests/gpu/check.sh does this)
    python tests/gpu/check.py run OUTDIR --cpu-dry-run  # every phase end to end on a CPU, tiny shapes

Phases: install (the carried wheels, then the project, without dependencies), env (the card, torch and the
measured bf16 matmul peak), tests (tests/gpu), prepare (the benches' token caches, and nanoGPT's
train.bin/val.bin from the same tokens), then `fragment-llm bench` for each of BENCHES and nanoGPT's
train.py on high_end_gpu's shape. `env` and `prepare` are this script's own subcommands, each run in a
process of its own like every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "gpu"
BUDGET_SECONDS = 450  # the whole check, inside a call of at most 8 minutes (the machine's start not counted)
LEAST_SECONDS = 20  # a phase is not started with less left than this
# The benches, in the order they run: each `fragment-llm bench` with these overrides.
BENCHES = {
    "high_end_gpu": ["experiment=high_end_gpu"],  # model=medium at block 1024, bf16, compiled
    "mid_range_gpu": ["experiment=mid_range_gpu"],
    "high_end_gpu_eager": ["experiment=high_end_gpu", "hardware.compile=false"],
    "high_end_gpu_eager_fp16": ["experiment=high_end_gpu", "hardware.compile=false", "hardware.amp_dtype=fp16"],
    "high_end_gpu_gpt2": ["experiment=high_end_gpu", "arch=gpt2"],  # nanoGPT's layout
}
# On a CPU: each recipe shrunk by debug=fast, on the bundled corpus, in fp32, uncompiled.
DRY_RUN = ["debug=fast", "data=pydoc", "hardware.device=cpu", "hardware.amp=false"]
NANOGPT_ITERATIONS, NANOGPT_SETTLED = 40, 10  # its per-iteration times from the 10th on (compiling is in the first)
ITERATION = re.compile(r"^iter (\d+): loss [-\d.naif]+, time ([\d.]+)ms", re.MULTILINE)


class Check:
    """The phases' bookkeeping: the deadline, the log, and check.json rewritten after every phase."""

    def __init__(self, out: Path, dry_run: bool, budget: float, nanogpt: Path, timeout_scale: float, only: set[str]):
        self.out, self.dry_run, self.nanogpt, self.timeout_scale = out, dry_run, nanogpt, timeout_scale
        self.only = only  # the phases to run (besides installing and env); empty: all
        self.deadline = time.monotonic() + budget
        self.scratch = Path(tempfile.mkdtemp(prefix="fragment-gpu-check-"))
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", COLUMNS="160")
        self.env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if dry_run:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run, even on a machine with a GPU
        # Every bench's and the preparation's overrides end with these: the token cache in the scratch folder.
        self.extra = [*(DRY_RUN if dry_run else []), f"paths.cache={self.scratch / 'cache'}"]
        self.result = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "dry_run": dry_run,
            "budget_s": budget,
            "phases": [],
            "bench": {},
        }
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "check.log", "a", encoding="utf-8")

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def phase(self, name: str, command: list[str], timeout: float, cwd: Path = ROOT) -> dict:
        """Run `command` in a process group of its own for at most `timeout` s (less if the budget is
        nearly spent), its output appended to check.log (and kept in `output` in the record); its record,
        added to check.json."""
        left = self.deadline - time.monotonic()
        record: dict = {"name": name, "command": command}
        if self.only and name not in self.only and not name.startswith(("install", "env")):
            return self.record({**record, "status": "skipped", "reason": "not in --only"})
        if left < LEAST_SECONDS:
            return self.record({**record, "status": "skipped", "reason": f"out of time ({left:.0f} s left)"})
        limit = min(timeout * self.timeout_scale, left)
        self.say(f"== {name} (at most {limit:.0f} s): {' '.join(command)}")
        started = time.monotonic()
        with open(self.scratch / f"{name}.out", "w+", encoding="utf-8", errors="replace") as output:
            process = subprocess.Popen(
                command, cwd=cwd, env=self.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                code = process.wait(timeout=limit)
                status = "ok" if code == 0 else "failed"
            except subprocess.TimeoutExpired:  # its own timeout, or what was left of the budget
                code, status = None, "timeout" if limit == timeout * self.timeout_scale else "out of time"
            try:  # what it left running too (torchrun's ranks, compile workers): the next phase has the GPU
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            code = process.wait() if code is None else code
            output.seek(0)
            text = output.read()
        self.log.write(text)
        seconds = time.monotonic() - started
        return self.record({**record, "status": status, "returncode": code, "seconds": seconds, "output": text})

    def skip(self, name: str, reason: str) -> dict:
        return self.record({"name": name, "status": "skipped", "reason": reason})

    def record(self, record: dict) -> dict:
        """`record` into check.json, with the end of its output (check.log has all of it)."""
        self.say(f"   {record['name']}: {record['status']} {record.get('reason', '')}".rstrip())
        self.result["phases"].append({**record, "output": record.get("output", "")[-2000:]})
        self.write()
        return record

    def write(self) -> None:
        path = self.out / "check.json"
        path.with_suffix(".tmp").write_text(json.dumps(self.result, indent=2), encoding="utf-8")
        path.with_suffix(".tmp").replace(path)


def install(check: Check) -> None:
    """The carried wheels (hydra-core, omegaconf, antlr4), then the project, neither with dependencies
    nor an index: the machine has no network. Every phase also finds the checkout on PYTHONPATH."""
    if check.dry_run:
        check.skip("install", "--cpu-dry-run: this environment has the packages")
        return
    wheels = sorted(str(path) for path in (HERE / "wheels").glob("*.whl"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir"]
    if wheels:
        check.phase("install-wheels", [*pip, *wheels], 120)
    else:
        check.skip("install-wheels", "tests/gpu/wheels/ holds no wheels (tests/gpu/README.md says how to fill it)")
    check.phase("install-project", [*pip, "--no-build-isolation", "-e", str(ROOT)], 120)


def bench_phases(check: Check, steps: int) -> None:
    for name, overrides in BENCHES.items():
        json_path = check.scratch / f"{name}.json"
        arguments = [*overrides, *check.extra]
        command = [sys.executable, "-m", "fragment_llm", "bench", *arguments, "--steps", str(steps)]
        check.phase(f"bench-{name}", [*command, "--prepare-mb", "0", "--json", str(json_path)], 240)
        if json_path.is_file():
            check.result["bench"][name] = json.loads(json_path.read_text(encoding="utf-8"))
            check.write()
        if name == "high_end_gpu":
            nanogpt_phase(check)


def nanogpt_phase(check: Check) -> None:
    """nanoGPT's own train.py on high_end_gpu's shape and tokens (`prepare` wrote them), its tokens per
    second the median of its iterations after the first NANOGPT_SETTLED."""
    missing = [name for name in ("train.py", "model.py", "configurator.py") if not (check.nanogpt / name).is_file()]
    shape_file = check.nanogpt / "data" / "fragment" / "shape.json"
    if missing or not shape_file.is_file():
        lacking = missing or "data/fragment (the prepare phase writes it)"
        check.skip("nanogpt", f"{check.nanogpt} lacks {lacking}: see tests/gpu/README.md")
        return
    shape = json.loads(shape_file.read_text(encoding="utf-8"))
    system = ["--device=cpu", "--compile=False", "--dtype=float32"] if check.dry_run else ["--dtype=bfloat16"]
    arguments = [f"--{key}={value}" for key, value in shape.items()] + system
    iterations = NANOGPT_SETTLED + 2 if check.dry_run else NANOGPT_ITERATIONS
    arguments += [
        "--dataset=fragment",
        f"--out_dir={check.scratch / 'nanogpt'}",
        f"--max_iters={iterations}",
        f"--lr_decay_iters={iterations}",
        "--warmup_iters=5",
        "--eval_interval=100000",  # one evaluation, at iteration 0, of one batch
        "--eval_iters=1",
        "--log_interval=1",
        "--always_save_checkpoint=False",
    ]
    record = check.phase("nanogpt", [sys.executable, "train.py", *arguments], 240, cwd=check.nanogpt)
    times = [float(ms) for step, ms in ITERATION.findall(record.pop("output", "")) if int(step) >= NANOGPT_SETTLED]
    tokens = shape["batch_size"] * shape["gradient_accumulation_steps"] * shape["block_size"]
    check.result["nanogpt"] = {
        "shape": shape,
        "status": record["status"],
        "iterations_timed": len(times),
        "ms_per_iter_median": statistics.median(times) if times else None,
        "tokens_per_sec": tokens / statistics.median(times) * 1000 if times else None,
    }
    check.write()


def figures(result: dict) -> dict:
    """The figures issue 24 asks for, from the benches and nanoGPT, with the ratios between them."""
    bench, nanogpt = result["bench"], result.get("nanogpt") or {}
    peak_8192 = (result.get("env") or {}).get("bf16_peak_flops_8192")
    found = {
        name: {
            "tokens_per_sec": each["train"]["tokens_per_sec"],
            "mfu": each["train"]["mfu"],  # against the peak the bench measured (4096, chains of 8)
            "mfu_against_8192_peak": each["train"]["tokens_per_sec"] * each["train"]["flops_per_token"] / peak_8192
            if peak_8192
            else None,
            "peak_flops": each["train"]["peak_flops"],
            "peak_gpu_memory_mb": each.get("peak_gpu_memory_mb"),
            "startup_seconds": each["startup_seconds"],
            "generate_cached_tokens_per_sec": each["generate"]["cached_tokens_per_sec"],
            "precision": each["config"]["precision"],
            "compile": each["config"]["compile"],
            "attention": each["config"]["attention"],
        }
        for name, each in bench.items()
    }
    speed = {name: each["tokens_per_sec"] for name, each in found.items()}
    speed["nanogpt"] = nanogpt.get("tokens_per_sec")

    def ratio(one: str, other: str) -> float | None:
        return speed[one] / speed[other] if speed.get(one) and speed.get(other) else None

    found["ratios"] = {
        "compile_over_eager": ratio("high_end_gpu", "high_end_gpu_eager"),
        "fp16_over_bf16": ratio("high_end_gpu_eager_fp16", "high_end_gpu_eager"),
        "ours_over_nanogpt": ratio("high_end_gpu", "nanogpt"),
        "ours_gpt2_layout_over_nanogpt": ratio("high_end_gpu_gpt2", "nanogpt"),
    }
    against_nanogpt, medium = found["ratios"]["ours_over_nanogpt"], found.get("high_end_gpu", {}).get("mfu")
    found["goals"] = {
        "ours_over_nanogpt_at_least_1.05": None if against_nanogpt is None else against_nanogpt >= 1.05,
        "mfu_medium_block_1024_at_least_0.45": None if medium is None else medium >= 0.45,
    }
    return found


def junit_summary(path: Path) -> dict | None:
    """The GPU tests' counts, failures and recorded properties, from pytest's junit.xml."""
    if not path.is_file():
        return None
    import xml.etree.ElementTree as ElementTree

    cases = list(ElementTree.parse(path).getroot().iter("testcase"))
    summary: dict = {"passed": 0, "failed": [], "skipped": 0, "properties": {}}
    for case in cases:
        name = f"{case.get('classname')}.{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            summary["failed"].append(name)
        elif case.find("skipped") is not None:
            summary["skipped"] += 1
        else:
            summary["passed"] += 1
        for prop in case.iter("property"):
            summary["properties"].setdefault(name, {})[prop.get("name")] = prop.get("value")
    return summary


def run(args: argparse.Namespace) -> int:
    """Every phase, in order; check.json says what each did. Exit status 1 if any failed or hung."""
    out, dry_run, nanogpt = args.out.resolve(), args.cpu_dry_run, args.nanogpt.resolve()
    only = set(filter(None, args.only.split(",")))
    check = Check(out, dry_run, args.budget, nanogpt, args.timeout_scale, only)
    install(check)
    env_file = check.scratch / "env.json"
    check.phase("env", [sys.executable, __file__, "env", str(env_file), *(["--cpu"] if dry_run else [])], 90)
    check.result["env"] = json.loads(env_file.read_text(encoding="utf-8")) if env_file.is_file() else None
    junit = out / "junit.xml"
    workers = "0" if dry_run else "4"  # GPU tests side by side: each uses a sliver of the GPU, none all of it
    pytest = [sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-n", workers, "-p", "no:cacheprovider"]
    check.phase("tests", [*pytest, "-q", "-rA", f"--junitxml={junit}"], 180)
    check.result["tests"] = junit_summary(junit)
    has_nanogpt = (nanogpt / "train.py").is_file()
    configs = [[*BENCHES[name], *check.extra] for name in ("high_end_gpu", "mid_range_gpu")]
    data_dir = str(nanogpt / "data" / "fragment") if has_nanogpt else "-"
    check.phase("prepare", [sys.executable, __file__, "prepare", data_dir, json.dumps(configs)], 150)
    bench_phases(check, steps=1 if dry_run else 5)
    check.result["figures"] = figures(check.result)
    check.write()
    print_summary(check)
    return 1 if any(phase["status"] in ("failed", "timeout") for phase in check.result["phases"]) else 0


def print_summary(check: Check) -> None:
    """The phases and the figures, last in the output (the device call returns the output's end)."""
    for phase in check.result["phases"]:
        seconds = f"{phase['seconds']:.0f} s" if "seconds" in phase else ""
        check.say(f"{phase['name']:<32} {phase['status']:<8} {seconds:>6} {phase.get('reason', '')}")
    tests = check.result.get("tests") or {}
    failed = tests.get("failed", [])
    check.say(f"GPU tests: {tests.get('passed')} passed, {tests.get('skipped')} skipped, {len(failed)} failed {failed}")
    env = check.result.get("env") or {}
    check.say(f"{env.get('gpu', env.get('device'))}, torch {env.get('torch')}, CUDA {env.get('cuda')}")
    found = check.result["figures"]
    for name in BENCHES:
        if name in found:
            each = found[name]
            memory = f"{each['peak_gpu_memory_mb']:,.0f} MB" if each["peak_gpu_memory_mb"] else "-"
            check.say(
                f"{name:<26} {each['tokens_per_sec']:>12,.0f} tokens/s  MFU {each['mfu']:6.1%}  {memory:>10}  "
                f"first step {each['startup_seconds']:5.1f} s  "
                f"generation {each['generate_cached_tokens_per_sec']:,.0f} tokens/s"
            )
    nanogpt = check.result.get("nanogpt") or {}
    check.say(f"nanogpt                    {nanogpt.get('tokens_per_sec') or 0:>12,.0f} tokens/s")
    check.say(f"ratios: {json.dumps(found['ratios'])}")
    check.say(f"goals: {json.dumps(found['goals'])}")


def measure_env(path: Path, cpu: bool) -> None:
    """The machine: torch, the card, and the matmul peak (bf16 on a GPU, at the bench's size and at 8192)."""
    import torch

    from fragment_llm.train.hardware import matmul_flops, peak_matmul_flops

    device = torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")
    found: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    found["device"] = str(device)
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        found.update(gpu=properties.name, capability=f"{properties.major}.{properties.minor}")
        found.update(memory_gib=properties.total_memory / 2**30, multiprocessors=properties.multi_processor_count)
        found["bf16_peak_flops_bench"] = peak_matmul_flops(torch.bfloat16, device)  # what the bench's MFU divides by
        found["bf16_peak_flops_8192"] = matmul_flops(torch.bfloat16, device, 8192, repeats=10, chain=2)
        query = "name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu"
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True, text=True)
            found["nvidia_smi"] = smi.stdout.strip()
    else:
        found["fp32_peak_flops"] = matmul_flops(torch.float32, device, 256, repeats=3)
    path.write_text(json.dumps(found, indent=2), encoding="utf-8")
    print(json.dumps(found, indent=2))


def prepare(data_dir: str, configs: list[list[str]]) -> None:
    """The token caches of `configs` (each a bench's overrides), so that no bench's time to its first step
    includes training a tokenizer; and, unless `data_dir` is `-`, the first config's tokens as nanoGPT
    reads them (train.bin, val.bin as uint16, meta.pkl with the padded vocabulary) and its shape."""
    import numpy as np

    from fragment_llm.data.cache import prepare_data
    from fragment_llm.launch.compose import compose_settings
    from fragment_llm.model.gpt import padded_vocab_size

    for index, overrides in enumerate(configs):
        settings = compose_settings(overrides)
        model, data_settings = settings.model, settings.data
        vocab, block, frequency = model.vocab_size, model.block_size, settings.tokenizer.min_frequency
        data = prepare_data(data_settings, vocab, block, frequency, False, Path(settings.paths.cache))
        print(f"{' '.join(overrides)}: {data.train_tokens:,} training tokens, vocabulary {data.vocab_size}")
        if index or data_dir == "-":
            continue
        folder = Path(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for split, tokens in (("train", data.train), ("val", data.val)):
            assert int(tokens.max()) < 2**16, "nanoGPT reads uint16 tokens"
            np.asarray(tokens, dtype=np.uint16).tofile(folder / f"{split}.bin")
        with open(folder / "meta.pkl", "wb") as handle:
            pickle.dump({"vocab_size": padded_vocab_size(data.vocab_size)}, handle)
        train = settings.train
        shape = {
            "batch_size": train.batch_size,
            "gradient_accumulation_steps": train.grad_accum_steps,
            "block_size": block,
            "n_layer": model.n_layer,
            "n_head": model.n_head,
            "n_embd": model.n_embd,
            "dropout": model.dropout or 0.0,
            "bias": model.bias,
        }
        (folder / "shape.json").write_text(json.dumps(shape), encoding="utf-8")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("run", help="every phase, figures into OUTDIR")
    checking.add_argument("out", type=Path, metavar="OUTDIR")
    checking.add_argument("--cpu-dry-run", action="store_true", help="on a CPU, tiny shapes: the script end to end")
    checking.add_argument("--budget", type=float, default=BUDGET_SECONDS, help="seconds for every phase together")
    checking.add_argument("--nanogpt", type=Path, default=HERE / "nanogpt", help="nanoGPT's train.py, model.py ...")
    checking.add_argument(
        "--timeout-scale", type=float, default=1.0, help="every phase's timeout times this (a slow machine's dry run)"
    )
    checking.add_argument(
        "--only", default="", metavar="PHASES", help="these phases alone, e.g. bench-high_end_gpu_gpt2,prepare,nanogpt"
    )
    environment = commands.add_parser("env", help="(a phase) the machine, as JSON")
    environment.add_argument("json", type=Path)
    environment.add_argument("--cpu", action="store_true")
    preparing = commands.add_parser("prepare", help="(a phase) the token caches, and nanoGPT's data")
    preparing.add_argument("data_dir")
    preparing.add_argument("configs", type=json.loads)
    args = parser.parse_args(argv)
    if args.command == "env":
        measure_env(args.json, args.cpu)
        return 0
    if args.command == "prepare":
        prepare(args.data_dir, args.configs)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
