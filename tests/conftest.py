"""Shared fixtures: configs composed exactly as run.py composes them, and small local corpora."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from fragment_llm.config import Config, load_settings

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
    from fragment_llm.trainer import train

    run_dir = root / "run"
    run_dir.mkdir(parents=True)
    logger = logging.getLogger("fragment_llm")
    handlers, propagate = list(logger.handlers), logger.propagate
    setup_logging(run_dir / "train.log", console_output=False)
    try:
        train(settings_for(tiny_overrides(root, corpus, **keys)), run_dir)
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.handlers[:], logger.propagate = handlers, propagate
    return run_dir


def run_cli(args: list[str], cwd: Path, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS...` (e.g. `[RUN, key=value]` or `["-m", "fragment_llm", ...]`) as a user would,
    with `stdin` as its standard input."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """About 60 KB of real English prose: a slice of Python's documentation, as one local file."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in sorted(topics))[:60_000]
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text(text, encoding="utf-8")
    return path
