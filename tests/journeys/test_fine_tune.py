"""Fine-tuning from a run (`train.init_from`): a new run that starts from a trained model's weights and
tokenizer. One tiny parent and one tiny fine-tuned run are trained for the whole module."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import RUN, run_in_process, tiny_overrides, train_tiny_run

from fragment_llm.config.schema import ConfigError
from fragment_llm.launch import conf
from fragment_llm.launch.job import run_job
from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import CheckpointError, load_checkpoint
from fragment_llm.train.from_run import find_init_checkpoint, fine_tune_settings


def fine_tune_overrides(root, corpus, parent, **keys) -> list[str]:
    """The tiny run's overrides with no model key: the model must come from the parent."""
    overrides = tiny_overrides(root, corpus, **keys) + [f"train.init_from={parent}"]
    return [item for item in overrides if not item.startswith("model.")]


def fine_tune(root, corpus, parent, name, *extra, **keys):
    """Train (or fail to) in-process as `python run.py` would; returns the run directory and the best loss."""
    overrides = fine_tune_overrides(root, corpus, parent, **keys) + list(extra)
    run_dir = root / name
    return run_dir, run_job(conf.compose(overrides), run_dir, overrides)


@pytest.fixture(scope="module")
def parent(tmp_path_factory, corpus):
    """A finished tiny run (30 steps), its directory under a root whose cache the fine-tuned runs share."""
    return train_tiny_run(tmp_path_factory.mktemp("finetune"), corpus)


@pytest.fixture(scope="module")
def fine_tuned(parent, corpus):
    """10 steps from the parent's final model, on the same text, given no model key."""
    run_dir, best = fine_tune(parent.parent, corpus, parent, "fine_tuned", **{"train.max_iters": 10})
    assert best < float("inf"), read_summary(run_dir).get("error")
    return run_dir


@pytest.mark.slow
def test_fine_tuning_starts_at_the_parents_loss_with_its_model_and_tokenizer(parent, fine_tuned):
    before, after = read_summary(parent), read_summary(fine_tuned)
    # Step 0 of the new run evaluates the parent's weights on the same validation windows: the same loss, bit for bit.
    assert after["initial_val_loss"] == before["val_loss"]
    assert after["status"] == "completed" and after["steps"] == 10  # a schedule of its own, from step 0
    parent_model = load_checkpoint(parent / "models" / "final_model.pt")
    model = load_checkpoint(fine_tuned / "models" / "final_model.pt", for_resume=True)
    assert model["model_config"] == parent_model["model_config"]  # the parent's, though no model key was given
    assert model["tokenizer_hash"] == parent_model["tokenizer_hash"] == after["init_from_tokenizer_hash"]
    assert (fine_tuned / "tokenizer.json").read_text() == (parent / "tokenizer.json").read_text()
    assert after["init_from"] == str(parent / "models" / "final_model.pt")
    assert model["config"]["train"]["init_from"] == str(parent)
    changed = [
        key
        for key, value in model["model_state_dict"].items()
        if not torch.equal(value, parent_model["model_state_dict"][key])
    ]
    assert changed  # it trained


@pytest.mark.slow
def test_a_fine_tuned_run_resumes(parent, fine_tuned, corpus):
    overrides = fine_tune_overrides(parent.parent, corpus, parent, **{"train.max_iters": 12})
    overrides = [item for item in overrides if not item.startswith("train.init_from=")]
    overrides.append(f"train.resume={fine_tuned}")
    resumed = parent.parent / "resumed"
    assert run_job(conf.compose(overrides), resumed, overrides) < float("inf")
    assert read_summary(resumed)["steps"] == 12


@pytest.mark.slow
def test_a_conflicting_model_key_is_one_line_and_a_non_zero_exit(parent, corpus, tmp_path):
    overrides = fine_tune_overrides(tmp_path, corpus, parent) + ["model.n_embd=128"]
    result = run_in_process([RUN, *overrides], cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.n_embd=128 conflicts with the model of "), lines


@pytest.mark.slow
def test_the_model_is_the_parents_and_only_dropout_may_change(parent, corpus, tmp_path):
    saved = load_checkpoint(parent / "models" / "final_model.pt")["config"]

    def settings(*extra):
        overrides = fine_tune_overrides(tmp_path, corpus, parent) + list(extra)
        return fine_tune_settings(conf.compose(overrides), saved, overrides)

    assert settings().model == settings("model.n_embd=64", "model.n_layer=1").model
    assert (settings().model.n_embd, settings().model.dropout) == (64, 0.0)
    assert settings("model.dropout=0.1").model.dropout == 0.1
    assert settings().tokenizer.retrain is False
    for extra, needle in [
        ("model.n_layer=2", "model.n_layer=2 conflicts with the model of train.init_from (model.n_layer=1)"),
        ("model.position=learned", "model.position=learned conflicts"),
        ("tokenizer.retrain=true", "tokenizer.retrain=True conflicts"),
        ("model=small", "model.vocab_size=8192 conflicts"),
        ("arch=gpt2", "arch=gpt2 does not combine with train.init_from"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            settings(extra)


@pytest.mark.slow
def test_a_bad_start_is_one_line(parent, corpus, tmp_path):
    best = parent / "models" / "best_model.pt"
    assert find_init_checkpoint(best)[0] == best  # a model file names its checkpoint explicitly
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint" * 100)
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "checkpoints" / "last.pt").write_bytes((parent / "checkpoints" / "last.pt").read_bytes())
    for path, needle in [
        (tmp_path / "missing", "does not exist"),
        (junk, "is damaged or not a checkpoint"),
        (tmp_path, "has no model (models/final_model.pt) and no checkpoint"),
        (
            unfinished,
            f"(the run did not finish); start from one of its checkpoints by name: train.init_from={unfinished}/",
        ),
    ]:
        with pytest.raises(CheckpointError, match=re.escape(needle)):
            find_init_checkpoint(path)
    for name, start, extra, needle in [
        ("both", parent, [f"train.resume={parent}"], "train.init_from does not combine with train.resume"),
        ("missing", "nowhere", [], "train.init_from=nowhere does not exist"),
    ]:
        run_dir, best_loss = fine_tune(tmp_path, corpus, start, name, *extra)
        summary = read_summary(run_dir)
        assert best_loss == float("inf") and summary["status"] == "failed"
        assert needle in summary["error"] and "\n" not in summary["error"]
