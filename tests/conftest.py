"""The fixtures tests share: a local corpus, one tiny trained run per session and its model, a finished run
that run.py trained, and a hand-made sweep. Plain helpers (the tiny run's overrides, running commands, run
directories made by hand) are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import RUN, SHARED, SWEEP, run_in_process, tiny_overrides, train_tiny_run, write_run


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


@pytest.fixture(scope="module")
def trained(trained_run):
    """The trained run's model and tokenizer, loaded once per test module."""
    from fragment_llm.train.from_run import load_run

    return load_run(trained_run)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, corpus):
    """A finished tiny run trained by run.py into a directory of our choosing. Tests only read it."""
    root = tmp_path_factory.mktemp("finished")
    run_dir = root / "run"
    keys = {"train.max_iters": 6, "train.save_interval": 2, "train.eval_interval": 3}
    result = run_in_process([RUN, *tiny_overrides(root, corpus, **keys), f"hydra.run.dir={run_dir}"], cwd=root)
    assert result.returncode == 0, result.stderr
    return root, run_dir


@pytest.fixture
def outputs(tmp_path):
    """A sweep of six completed jobs (three learning rates x two seeds) with long shared overrides."""
    root = tmp_path / "outputs"
    for job, (lr, seed) in enumerate((lr, seed) for lr in ("0.003", "0.001", "0.0003") for seed in (1, 2)):
        loss = 3.1 + job / 10 + seed / 1000
        summary = {
            "status": "completed",
            "started_at": f"2026-11-25T08:14:{50 + job}+00:00",
            "steps": 60,
            "tokens": 61440,
            "best_val_loss": loss,
            "val_bpb": loss / 2.1,
            "best_val_bpb": loss / 2.1,
            "wall_time_s": 12.5,
        }
        write_run(root / SWEEP / str(job), [f"optimizer.lr={lr}", f"train.seed={seed}", *SHARED], summary)
    return root
