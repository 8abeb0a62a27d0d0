"""Shared fixtures: configs composed exactly as run.py composes them, and small local corpora."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from hydra import compose, initialize_config_dir

from fragment_llm.config.load import load_settings
from fragment_llm.config.schema import Config
from fragment_llm.signals import STOP_SIGNALS

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
RUN = str(ROOT / "run.py")


def tiny_overrides(tmp_path: Path, corpus: Path, **keys) -> list[str]:
    """A 1-layer, 64-wide model on a local corpus: a real run that takes seconds."""
    values = {
        "data": "text",
        "data.path": str(corpus),
        "model.vocab_size": 512,
        "model.block_size": 128,
        "model.n_layer": 1,
        "model.n_head": 2,
        "model.n_embd": 64,
        "model.dropout": 0.0,
        "train.batch_size": 4,
        "train.grad_accum_steps": 1,
        "train.max_iters": 30,
        "train.eval_interval": 10,
        "train.eval_iters": 4,
        "optimizer.lr": 3e-3,
        "paths.outputs": str(tmp_path / "outputs"),
        "paths.cache": str(tmp_path / "cache"),
    }
    values.update(keys)
    return [f"{key}={value}" for key, value in values.items()]


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def settings_for(overrides: list[str]) -> Config:
    return load_settings(compose_config(overrides))


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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """About 60 KB of real English prose: a slice of Python's documentation, as one local file."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in sorted(topics))[:60_000]
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus) -> Path:
    """One tiny trained run for the tools' tests (generate, eval, export, browsing), trained once per test
    session. Tests only read it: one that damages or extends a run works on a copy.
    Vocabulary 500 pads the embedding to 512 rows, 12 of them no token (sampling and export leave
    them out); 50 steps make samples at steps 20 and 40 and pass the end of epoch 1 (47 steps), which
    leaves checkpoints/checkpoint_epoch_1.pt."""
    keys = {
        "model.vocab_size": 500,
        "train.max_iters": 50,
        "train.sample_every": 20,
        "train.checkpoint_every_epochs": 1,
    }
    return train_tiny_run(tmp_path_factory.mktemp("trained"), corpus, **keys)
