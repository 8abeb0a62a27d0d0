"""What the tests share besides fixtures (those are in conftest.py): the repository's paths, the tiny run's
overrides, running `python run.py` and `fragment-llm` as a user would and checking their one-line errors,
and hand-made run directories, corpora and models."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from fragment_llm.config.load import load_settings
from fragment_llm.config.schema import Config, DataConfig, DataSource
from fragment_llm.launch import conf
from fragment_llm.signals import STOP_SIGNALS

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
RUN = str(ROOT / "run.py")


# ---- the tiny run: real, and seconds long ---------------------------------------------------------------
def flat_keys(node: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as `section.key` -> value."""
    keys = {}
    for key, value in node.items():
        keys.update(flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return keys


FAST = flat_keys(OmegaConf.to_container(OmegaConf.load(CONF_DIR / "debug" / "fast.yaml")))
BLOCK = FAST["model.block_size"]  # the tiny model's context: 128


def tiny_overrides(tmp_path: Path, corpus: Path, **keys) -> list[str]:
    """debug=fast's model (1 layer, 64 wide) and batch on a local corpus, 30 steps long: a real run that takes
    seconds. conf/debug/fast.yaml's keys are given one by one rather than as `debug=fast`, which does not
    combine with `train.resume` or `train.init_from` (many tests add them to these), and without its
    `train.epochs`: the hardware group's (8 on a CPU) leaves `train.max_iters` to decide a run's length."""
    values = {
        "data": "text",
        "data.path": str(corpus),
        **{key: value for key, value in FAST.items() if key != "train.epochs"},
        "train.max_iters": 30,
        "train.eval_interval": 10,
        "train.eval_iters": 4,
        "optimizer.lr": 3e-3,
        "paths.outputs": str(tmp_path / "outputs"),
        "paths.cache": str(tmp_path / "cache"),
    }
    values.update(keys)
    return [f"{key}={value}" for key, value in values.items()]


def mixture_corpora(folder: Path, corpus: Path) -> tuple[Path, Path]:
    """Two corpora unlike each other, for a mixture: `corpus` (English prose) and about 30 KB of Python code
    (the start of argparse's source), as prose.txt and code.txt in `folder`."""
    import argparse
    import inspect

    prose, code = folder / "prose.txt", folder / "code.txt"
    if not code.exists():
        prose.write_text(corpus.read_text(encoding="utf-8"), encoding="utf-8")
        code.write_text(inspect.getsource(argparse)[:30_000], encoding="utf-8")
    return prose, code


def mixture_overrides(tmp_path: Path, corpus: Path, weights=(3, 1), **keys) -> list[str]:
    """tiny_overrides on `data=mix` of mixture_corpora (prose.txt and code.txt, weighted `weights`), as a user
    types the list: `data.sources=[{path:...,weight:3},{path:...,weight:1}]`."""
    prose, code = mixture_corpora(tmp_path, corpus)
    sources = f"[{{path:{prose},weight:{weights[0]}}},{{path:{code},weight:{weights[1]}}}]"
    overrides = tiny_overrides(tmp_path, corpus, **{"data": "mix", "data.sources": sources, **keys})
    return [item for item in overrides if not item.startswith("data.path=")]


def settings_for(overrides: list[str]) -> Config:
    """The settings `python run.py OVERRIDES` trains with."""
    return load_settings(conf.compose(overrides))


def make_trainer(tmp_path, corpus, name="run", **keys):
    """A Trainer of a tiny run in `tmp_path`/`name`, ready to fit."""
    from fragment_llm.train.trainer import Trainer

    run_dir = tmp_path / name
    run_dir.mkdir()
    return Trainer(settings_for(tiny_overrides(tmp_path, corpus, **keys)), run_dir)


def train_tiny_run(root: Path, corpus: Path, **keys) -> Path:
    """Train a tiny model in-process into `root`/run and return the run directory (a few seconds).
    Its log goes to the run's train.log only; the package logger is restored afterwards (for caplog)."""
    from fragment_llm.console import setup_logging
    from fragment_llm.train.trainer import train

    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    with package_logging_restored():
        setup_logging(run_dir / "train.log", console_output=False)
        train(settings_for(tiny_overrides(root, corpus, **keys)), run_dir)
    return run_dir


@contextlib.contextmanager
def package_logging_restored() -> Iterator[None]:
    """Around a run in a test, which sets the package logger up for itself (train.log, the console):
    its handlers are closed afterwards and the logger is as it was before (for caplog, and the next run)."""
    logger = logging.getLogger("fragment_llm")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    try:
        yield
    finally:
        for handler in set(logger.handlers) - set(handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.handlers[:], logger.propagate, logger.level = handlers, propagate, level


# ---- GPU runs (tests/gpu/) ------------------------------------------------------------------------------
NO_CUDA = "needs a CUDA GPU (CI has none): tests/gpu/README.md runs these on a lent one"


def gpu_overrides(tmp_path: Path, corpus: Path, **keys) -> list[str]:
    """tiny_overrides on the GPU profile (hardware=gpu: the best device, AMP), with dropout, whose random
    numbers come from the GPU's generator: a resume must restore it."""
    return tiny_overrides(tmp_path, corpus, **{"hardware": "gpu", "model.dropout": 0.1, **keys})


# ---- commands as a user runs them -----------------------------------------------------------------------
@contextlib.contextmanager
def lock_held_elsewhere(run_dir: Path) -> Iterator[subprocess.Popen]:
    """Another process holding `run_dir`'s lock, as a run training into it would, until the block ends."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from fragment_llm.runs.claim import RunLock; "
            f"lock = RunLock({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def run_cli(args: list[str], cwd: Path, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS...` (e.g. `[RUN, key=value]` or `["-m", "fragment_llm", ...]`) as a user would,
    with `stdin` as its standard input."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def run_in_process(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`run_cli` without starting a Python: `[RUN, ...]` or `["-m", "fragment_llm", ...]` run here, with
    the command line, working directory, standard streams and COLUMNS a new process would have, and
    its exit status taken from SystemExit. Importing torch takes seconds, so this is for the many
    cases that test what a run or a tool does; what needs a process of its own (signals, kill -9,
    torchrun, pipes, launchers) uses run_cli. What a run changes process-wide (signal handlers,
    logging, Hydra's global state, the run stamp) is put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    from fragment_llm.commands.main import main as fragment_llm_main
    from fragment_llm.launch.compose import this_run_stamp

    out, err = io.StringIO(), io.StringIO()
    handlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    loggers = [logging.root, *(logger for logger in logging.root.manager.loggerDict.values())]
    logger_state = [
        (logger, list(logger.handlers), logger.level, logger.propagate, logger.disabled)
        for logger in loggers
        if isinstance(logger, logging.Logger)
    ]
    argv, directory, standard_input, columns = sys.argv, os.getcwd(), sys.stdin, os.environ.get("COLUMNS")
    this_run_stamp.cache_clear()  # each run names its own directory, as each process does
    try:
        os.chdir(cwd)
        os.environ["COLUMNS"] = "250"
        sys.stdin = io.StringIO(stdin or "")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if args[0] == RUN:
                    sys.argv = list(args)
                    runpy.run_path(RUN, run_name="__main__")
                    code = 0
                else:
                    assert args[:2] == ["-m", "fragment_llm"], args
                    sys.argv = ["fragment-llm", *args[2:]]
                    code = fragment_llm_main(list(args[2:]))
            except SystemExit as exit:
                code = exit.code
                if isinstance(code, str):  # as Python does: the message on stderr, status 1
                    print(code, file=sys.stderr)
                    code = 1
    finally:
        sys.argv, sys.stdin = argv, standard_input
        os.chdir(directory)
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for logger, logger_handlers, level, propagate, disabled in logger_state:
            logger.handlers[:] = logger_handlers
            logger.level, logger.propagate, logger.disabled = level, propagate, disabled
        GlobalHydra.instance().clear()
        this_run_stamp.cache_clear()
    return subprocess.CompletedProcess(args, code or 0, out.getvalue(), err.getvalue())


def call(argv, capsys):
    """main(argv) in this process: its exit code, standard output and standard error."""
    from fragment_llm.commands.main import main

    try:
        code = main([str(word) for word in argv])
    except SystemExit as exit:  # argparse's errors exit from inside parse_args
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_dirs(outputs):
    return sorted(path.parent for path in outputs.rglob("summary.json"))


def one_error_line(result: subprocess.CompletedProcess, needle: str) -> None:
    """The process failed with exactly one `error:` line on standard error, holding `needle`."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr


def assert_one_error_line(code, err, *needles):
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert str(needle) in err, err


# ---- run directories made by hand --------------------------------------------------------------------------
SHARED = [
    "data=text",
    "data.path=/home/someone/books/the_collected_works_of_someone.txt",
    "model.n_layer=1",
    "model.n_embd=64",
    "train.max_iters=60",
]
SWEEP = "multirun/2026-11-25/08-14-44_lr-seed_5c1e"


def write_run(folder, overrides, summary, mode="MULTIRUN", choices=None):
    """A run directory as run.py leaves it: summary.json and Hydra's records of it."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    choices = choices or {"model": "tiny", "hardware": "cpu", "optimizer": "adamw"}
    lines = "".join(f"      {group}: {option}\n" for group, option in choices.items())
    (folder / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  mode: {mode}\n  runtime:\n    choices:\n{lines}")
    return folder


def assert_fits(text, width, whole):
    """No line of `text` is wider than `width`, and each of `whole` (a `key=value`) is on one line."""
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    for item in whole:
        assert any(re.search(rf"(^|\s){re.escape(item)}(\s|$)", line) for line in lines), (item, text)


def seeded_runs(root, bits_per_byte, statuses=None):
    """A sweep over optimizer x train.seed, each job's best bits per byte as given (by optimizer)."""
    job = 0
    for optimizer, values in bits_per_byte.items():
        for seed, bpb in enumerate(values, start=1):
            summary = {
                "status": (statuses or {}).get(job, "completed"),
                "steps": 60,
                "best_val_loss": bpb * 2.1,
                "best_val_bpb": bpb,
            }
            write_run(root / str(job), [f"train.seed={seed}", f"optimizer={optimizer}", "model.n_layer=1"], summary)
            job += 1
    return root


SEPARATED = {"adamw": [1.60, 1.61, 1.59], "muon": [1.50, 1.52, 1.49]}

RECORDS = {
    ".hydra/config.yaml": "model:\n  n_embd: 64\noptimizer:\n  lr: 0.003\n",
    ".hydra/overrides.yaml": "- model.n_embd=64\n",
    ".hydra/hydra.yaml": "hydra:\n  runtime:\n    choices:\n      model: tiny\n      hardware: cpu\n",
}


def copy_run(trained_run, folder, name="run"):
    """A copy of the trained run with Hydra's records, as `run.py` leaves them."""
    copy = folder / name
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("tensorboard", "checkpoints"))
    for record, text in RECORDS.items():
        (copy / record).parent.mkdir(exist_ok=True)
        (copy / record).write_text(text)
    return copy


# ---- corpora and models ----------------------------------------------------------------------------------
def text_config(path, val_fraction: float = 0.1) -> DataConfig:
    return DataConfig(source=DataSource.text, path=str(path), val_fraction=val_fraction)


def prepare(path, cache, **keys):
    from fragment_llm.data.cache import prepare_data

    options = dict(vocab_size=512, block_size=128, min_frequency=2, retrain=False, cache_dir=cache)
    options.update(keys)
    return prepare_data(text_config(path), **options)


SHAPE = dict(vocab_size=300, block_size=16, n_layer=3, n_head=2, n_embd=64)


def small_gpt(**options):
    """A 3-layer model of SHAPE with the layout `options`, every weight non-zero, in eval mode."""
    import torch

    from fragment_llm.model.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE, **options))
    with torch.no_grad():  # zero-initialised weights would hide a mistake in the cached path
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.02)
    return model.eval()


# ---- runs to talk to (chat, serve) ----------------------------------------------------------------------------
def chatterbox_run(trained_run, folder, name="chatterbox"):
    """A copy of the trained run whose model, greedy (temperature 0), never ends a turn or a document:
    its final norm keeps one channel, from which the head makes "a" or "b" likelier than every other
    token (the stop tokens too), so an answer goes on for as many tokens as it is given."""
    import torch

    from fragment_llm.data.tokenizer import load_tokenizer, text_ids

    run = copy_run(trained_run, folder, name)
    a, b = text_ids(load_tokenizer(run / "tokenizer.json"), ["a", "b"])
    path = run / "models" / "final_model.pt"
    state = torch.load(path, weights_only=True)
    weights = state["model_state_dict"]
    weights["ln_f.weight"].zero_()[0] = 1.0
    if "ln_f.bias" in weights:
        weights["ln_f.bias"].zero_()
    column = weights["lm_head.weight"][:, 0]  # the head's only input now (with tied embeddings, also wte's)
    column.zero_()
    column[a[0]], column[b[0]] = 100.0, -100.0
    torch.save(state, path)
    return run


def pre_chat_run(trained_run, folder, name="pre-chat"):
    """A copy of the trained run as runs trained before the chat tokens were reserved: its tokenizer
    (the run's and the checkpoint's) spells them otherwise."""
    import torch

    from fragment_llm.data.tokenizer import tokenizer_from_str, tokenizer_hash

    run = copy_run(trained_run, folder, name)
    text = (run / "tokenizer.json").read_text(encoding="utf-8")
    for role in ("system", "user", "assistant", "end"):
        text = text.replace(f"<|{role}|>", f"<!{role}!>")
    (run / "tokenizer.json").write_text(text, encoding="utf-8")
    path = run / "models" / "final_model.pt"
    state = torch.load(path, weights_only=True)
    state["tokenizer"], state["tokenizer_hash"] = text, tokenizer_hash(tokenizer_from_str(text))
    torch.save(state, path)
    return run
