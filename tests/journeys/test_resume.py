"""Resuming a run (`train.resume=`): it continues bit for bit, may run longer but not change its model or
data, continues in its own directory but never twice at once, trains on the checkpoint's own tokenizer,
starts another optimizer's state afresh, and records the config it trained with; a mixture resumes as exactly.

Stopping a run so that it can resume (signals, kill -9): test_signals.py."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from helpers import (
    RUN,
    lock_held_elsewhere,
    mixture_overrides,
    one_error_line,
    run_in_process,
    settings_for,
    tiny_overrides,
    train_tiny_run,
)
from omegaconf import OmegaConf

from fragment_llm.config.schema import ConfigError
from fragment_llm.launch import conf
from fragment_llm.launch.job import run_job
from fragment_llm.runs.claim import RunLock
from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import load_checkpoint, save_checkpoint
from fragment_llm.train.from_run import resume_settings
from fragment_llm.train.trainer import Trainer

EXACT = {"model.dropout": 0.1, "train.max_iters": 40, "train.save_interval": 20, "train.eval_interval": 10}


def resume_run(tmp_path, corpus, run_name, resume_from, **keys):
    overrides = tiny_overrides(tmp_path, corpus, **keys) + [f"train.resume={resume_from}"]
    run_dir = tmp_path / run_name
    best = run_job(conf.compose(overrides), run_dir, overrides)
    return run_dir, best


def assert_same_tensors(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def assert_same_state(first, second) -> None:
    """Equal nested optimizer states: the same structure, bitwise equal tensors."""
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second)
    elif isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            assert_same_state(first[key], second[key])
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second)
        for a, b in zip(first, second):
            assert_same_state(a, b)
    else:
        assert first == second


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_resumed_run_matches_an_uninterrupted_one_bit_for_bit(tmp_path, corpus, optimizer):
    keys = {**EXACT, "optimizer": optimizer}
    whole = tmp_path / "whole"
    whole.mkdir()
    Trainer(settings_for(tiny_overrides(tmp_path, corpus, **keys)), whole).fit()
    step_20 = whole / "checkpoints" / "step_20.pt"
    assert load_checkpoint(step_20)["step"] == 20

    resumed, best = resume_run(tmp_path, corpus, "resumed", step_20, **keys)
    assert best < float("inf")
    uninterrupted = load_checkpoint(whole / "models" / "final_model.pt")
    continued = load_checkpoint(resumed / "models" / "final_model.pt")
    assert continued["step"] == uninterrupted["step"] == 40
    assert_same_tensors(uninterrupted["model_state_dict"], continued["model_state_dict"])
    assert_same_state(uninterrupted["optimizer_state_dict"], continued["optimizer_state_dict"])
    assert uninterrupted["data_position"] == continued["data_position"]
    assert uninterrupted["scheduler_state_dict"] == continued["scheduler_state_dict"]
    summary = read_summary(resumed)
    assert summary["resumed_from"] == str(step_20) and summary["resumed_at_step"] == 20
    assert summary["status"] == "completed"


def test_resume_may_extend_a_run_but_not_change_its_model_or_data(tmp_path, corpus):
    first = tmp_path / "first"
    first.mkdir()
    Trainer(settings_for(tiny_overrides(tmp_path, corpus, **{"train.max_iters": 6})), first).fit()

    longer, _ = resume_run(tmp_path, corpus, "longer", first, **{"train.max_iters": 10, "model.n_embd": 64})
    assert read_summary(longer)["steps"] == 10
    assert read_summary(longer)["resumed_from"].endswith("final_model.pt")

    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 14}) + [f"train.resume={first}"]
    best = run_job(conf.compose(overrides), first, overrides)
    assert best < float("inf") and read_summary(first)["steps"] == 14  # continued in its own directory
    assert load_checkpoint(first / "checkpoints" / "last.pt")["step"] == 14

    for keys, needle in [
        ({"model.n_embd": 128}, "model.n_embd=128 conflicts with the checkpoint (model.n_embd=64)"),
        ({"data.val_fraction": 0.2}, "data.val_fraction=0.2 conflicts with the checkpoint (data.val_fraction=0.1)"),
    ]:
        run_dir, best = resume_run(tmp_path, corpus, f"bad{len(keys)}{keys}", first, **keys)
        assert best == float("inf")
        summary = read_summary(run_dir)
        assert summary["status"] == "failed" and needle in summary["error"] and "\n" not in summary["error"]

    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text()[::-1])
    overrides = tiny_overrides(tmp_path, corpus) + [f"train.resume={first}"]
    changed = [item if not item.startswith("data.path=") else f"data.path={other}" for item in overrides]
    checkpoint = load_checkpoint(first / "models" / "final_model.pt")
    with pytest.raises(ConfigError, match=f"data.path={other} conflicts with the checkpoint"):
        resume_settings(conf.compose(changed), checkpoint["config"], changed)


def test_resuming_into_its_own_directory_is_allowed_but_not_twice_at_once(tmp_path, corpus):
    run_dir = train_tiny_run(tmp_path, corpus, **{"train.max_iters": 4})
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 6}) + [f"train.resume={run_dir}"]
    with RunLock(run_dir).acquire():  # another process is training into it
        assert run_job(conf.compose(overrides), run_dir, overrides) == math.inf
        assert read_summary(run_dir)["status"] == "completed" and read_summary(run_dir)["steps"] == 4
    (run_dir / ".lock").write_text("999999999\n")  # a stale lock file left by a dead process locks nothing
    assert run_job(conf.compose(overrides), run_dir, overrides) < math.inf
    assert read_summary(run_dir)["steps"] == 6


@pytest.mark.slow
def test_a_second_process_training_into_a_busy_directory_is_refused(tmp_path, corpus):
    run_dir = train_tiny_run(tmp_path, corpus, **{"train.max_iters": 2})
    with lock_held_elsewhere(run_dir) as holder:
        result = run_in_process(
            [
                RUN,
                *tiny_overrides(tmp_path, corpus, **{"train.max_iters": 4}),
                f"train.resume={run_dir}",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
        )
        one_error_line(result, f"is in use: another process (pid {holder.pid})")
    assert read_summary(run_dir)["steps"] == 2


def test_resume_trains_on_the_checkpoints_own_tokenizer_whatever_the_cache_holds(tmp_path, corpus):
    from fragment_llm.data.tokenizer import load_tokenizer, tokenizer_hash

    run_dir = train_tiny_run(tmp_path, corpus, **{"train.max_iters": 4})
    (cached,) = (tmp_path / "cache" / "tokenizers").glob("*.json")
    tokenizer = json.loads(cached.read_text())
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][:-1]  # another tokenizer under the same name
    cached.write_text(json.dumps(tokenizer))
    final = run_dir / "models" / "final_model.pt"
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 6}) + [f"train.resume={final}"]
    assert run_job(conf.compose(overrides), tmp_path / "resumed", overrides) < math.inf
    saved_hash = load_checkpoint(final)["tokenizer_hash"]
    assert tokenizer_hash(load_tokenizer(tmp_path / "resumed" / "tokenizer.json")) == saved_hash
    assert load_checkpoint(tmp_path / "resumed" / "models" / "final_model.pt")["tokenizer_hash"] == saved_hash

    # A checkpoint from before checkpoints carried their tokenizer and said how the corpus was hashed.
    older = {
        key: value for key, value in load_checkpoint(final).items() if key not in ("tokenizer", "corpus_hash_version")
    }
    save_checkpoint(tmp_path / "older.pt", older)
    overrides[-1] = f"train.resume={tmp_path / 'older.pt'}"
    assert run_job(conf.compose(overrides), tmp_path / "from_older", overrides) == math.inf
    error = read_summary(tmp_path / "from_older")["error"]
    assert f"the cached tokenizer {cached} differs" in error and "copy the run's tokenizer.json over it" in error
    assert "comes from an older fragment-llm" in (tmp_path / "from_older" / "train.log").read_text()

    damaged = {**load_checkpoint(final), "tokenizer": "{not a tokenizer"}
    save_checkpoint(tmp_path / "damaged.pt", damaged)
    overrides[-1] = f"train.resume={tmp_path / 'damaged.pt'}"
    assert run_job(conf.compose(overrides), tmp_path / "from_damaged", overrides) == math.inf
    assert "the checkpoint's tokenizer is damaged" in read_summary(tmp_path / "from_damaged")["error"]


@pytest.mark.parametrize("optimizer", ["sgd", "muon", "adafactor"])
def test_resume_with_another_optimizer_starts_its_state_afresh(tmp_path, corpus, optimizer):
    run_dir = train_tiny_run(tmp_path, corpus, **{"train.max_iters": 4})
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 6, "optimizer": optimizer})
    overrides.append(f"train.resume={run_dir}")
    assert run_job(conf.compose(overrides), tmp_path / "resumed", overrides) < math.inf
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert f"Resuming with optimizer {optimizer} (the checkpoint was trained with adamw)" in log
    assert (
        load_checkpoint(tmp_path / "resumed" / "models" / "final_model.pt", for_resume=True)["config"]["optimizer"][
            "name"
        ]
        == optimizer
    )


@pytest.mark.slow
def test_a_resumed_run_records_the_config_it_trained_with(finished_run, tmp_path):
    _, run_dir = finished_run
    outputs = tmp_path / "outputs"
    # Nothing says data=text or the model's size here: both come from the checkpoint.
    result = run_in_process(
        [
            RUN,
            f"train.resume={run_dir}",
            "train.max_iters=8",
            "optimizer.lr=1e-3",
            f"paths.outputs={outputs}",
            f"paths.cache={run_dir.parent / 'cache'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (resumed,) = [path.parent for path in outputs.rglob("summary.json")]
    recorded = OmegaConf.load(resumed / ".hydra" / "config.yaml")
    assert recorded.data.source == "text" and recorded.model.n_embd == 64 and recorded.optimizer.lr == 1e-3
    assert recorded.train.max_iters == 8
    assert OmegaConf.load(resumed / ".hydra" / "hydra.yaml").hydra.runtime.choices.data == "text"
    listing = run_in_process(
        ["-m", "fragment_llm", "runs", str(outputs), "--filter", "data.source=text", "--json"], cwd=tmp_path
    )
    assert [run["path"] for run in json.loads(listing.stdout)] == [str(resumed)]

    # Continued in its own directory, where Hydra rewrites .hydra/ with this command's composition.
    in_place = tmp_path / "in_place"
    shutil.copytree(run_dir, in_place)
    result = run_in_process(
        [
            RUN,
            f"train.resume={in_place}",
            f"hydra.run.dir={in_place}",
            "train.max_iters=8",
            f"paths.outputs={outputs}",
            f"paths.cache={run_dir.parent / 'cache'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert OmegaConf.load(in_place / ".hydra" / "config.yaml").data.source == "text"
    assert OmegaConf.load(in_place / ".hydra" / "hydra.yaml").hydra.runtime.choices.data == "text"
    assert read_summary(in_place)["choices"]["data"] == "text" and read_summary(in_place)["steps"] == 8


def test_a_resumed_mixture_matches_an_uninterrupted_one_bit_for_bit(tmp_path, corpus):
    overrides = mixture_overrides(tmp_path, corpus, **EXACT)
    whole = tmp_path / "whole"
    whole.mkdir()
    Trainer(settings_for(overrides), whole).fit()
    step_20 = whole / "checkpoints" / "step_20.pt"

    resumed = tmp_path / "resumed"
    with_resume = [*overrides, f"train.resume={step_20}"]
    assert run_job(conf.compose(with_resume), resumed, with_resume) < float("inf")
    uninterrupted = load_checkpoint(whole / "models" / "final_model.pt")
    continued = load_checkpoint(resumed / "models" / "final_model.pt")
    assert continued["step"] == uninterrupted["step"] == 40
    assert_same_tensors(uninterrupted["model_state_dict"], continued["model_state_dict"])
    assert_same_state(uninterrupted["optimizer_state_dict"], continued["optimizer_state_dict"])
    assert uninterrupted["data_position"] == continued["data_position"]

    def after_20(run_dir):  # the rows of the steps trained after the checkpoint: every figure but the clock's
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
        clock = ("elapsed_s", "tokens_per_sec")
        return [{key: value for key, value in row.items() if key not in clock} for row in rows if row["step"] > 20]

    assert after_20(whole) == after_20(resumed) and "val/bpb/code.txt" in after_20(resumed)[-1]
    assert read_summary(resumed)["val_bpb_by_source"] == read_summary(whole)["val_bpb_by_source"]

    other_weights = [*mixture_overrides(tmp_path, corpus, weights=(1, 1), **EXACT), f"train.resume={step_20}"]
    with pytest.raises(ConfigError, match=r"^data.sources=\[.*\] conflicts with the checkpoint"):
        resume_settings(conf.compose(other_weights), load_checkpoint(step_20)["config"], other_weights)
