"""Checkpoints (train/checkpoint.py): what a run saves round-trips, step checkpoints rotate, a full disk
keeps the previous one, random states survive a safe load, and a damaged file, a pickle carrying code or
data that is not a checkpoint is refused in one line."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest
import torch
from helpers import make_trainer, settings_for, tiny_overrides

from fragment_llm.model.gpt import GPT, GPTConfig
from fragment_llm.train import checkpoint as checkpoint_module
from fragment_llm.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from fragment_llm.train.from_run import find_resume_checkpoint
from fragment_llm.train.optim import build_optimizer
from fragment_llm.train.trainer import Trainer


def test_checkpoints_round_trip_with_the_guides_keys(tmp_path, corpus):
    trainer = make_trainer(tmp_path, corpus, **{"train.max_iters": 3})
    trainer.fit()
    checkpoint = load_checkpoint(tmp_path / "run" / "models" / "final_model.pt")
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "config", "model_config", "step"):
        assert key in checkpoint
    assert type(checkpoint["config"]) is dict and checkpoint["config"]["optimizer"]["name"] == "adamw"
    assert checkpoint["step"] == 3
    model = GPT(GPTConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval(), trainer.model.eval()
    idx = torch.randint(0, 512, (2, 64))
    assert torch.equal(model(idx)[0], trainer.model(idx)[0])
    optimizer = build_optimizer(model, trainer.settings.optimizer, torch.device("cpu"))
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])


def test_a_run_resumes_across_precisions_with_or_without_a_grad_scaler(tmp_path, corpus):
    # fp16 on a GPU keeps a GradScaler; fp32 and bf16 have none and save its empty state. Either resumes
    # with the other (a CPU run on an fp16 GPU, a GPU run on a CPU): an enabled scaler starts afresh.
    trainer = make_trainer(tmp_path, corpus, "fp32", **{"train.max_iters": 3})
    trainer.fit()
    without_scaler = load_checkpoint(tmp_path / "fp32" / "models" / "final_model.pt", for_resume=True)
    assert without_scaler["scaler_state_dict"] == {}
    resumed = make_trainer(tmp_path, corpus, "fp16", **{"train.max_iters": 6})
    resumed.precision.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # as fp16 on a GPU
    resumed.restore(without_scaler)
    assert resumed.step == 3 and resumed.precision.scaler.get_scale() == 1024.0
    with_scaler = {**without_scaler, "scaler_state_dict": resumed.precision.scaler.state_dict()}
    again = make_trainer(tmp_path, corpus, "fp32-again", **{"train.max_iters": 6})
    again.restore(with_scaler)
    assert again.step == 3 and not again.precision.scaler.is_enabled()


def test_step_checkpoints_rotate_and_last_points_at_the_newest(tmp_path, corpus):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    keys = {"train.max_iters": 22, "train.save_interval": 5, "train.keep_checkpoints": 2}
    trainer = Trainer(settings_for(tiny_overrides(tmp_path, corpus, **keys)), run_dir)
    seen = []
    original = trainer.save_step_checkpoint

    def record():
        path = original()
        seen.append(sorted(p.name for p in (run_dir / "checkpoints").iterdir()))
        assert (run_dir / "checkpoints" / "last.pt").samefile(path)
        return path

    trainer.save_step_checkpoint = record
    trainer.fit()
    assert seen[-1] == ["last.pt", "step_15.pt", "step_20.pt"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "step_15.pt", "step_20.pt"]
    last, final = run_dir / "checkpoints" / "last.pt", run_dir / "models" / "final_model.pt"
    assert (
        not last.samefile(final) and last.read_bytes() == final.read_bytes()
    )  # a copy: the final model may be replaced


def test_a_full_disk_keeps_the_previous_checkpoint_and_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "step_1.pt"
    config = {"vocab_size": 256, "block_size": 16, "n_layer": 1, "n_head": 1, "n_embd": 64}
    model = {"model_config": config, "model_state_dict": GPT(GPTConfig(**config)).state_dict()}
    save_checkpoint(path, {**model, "step": 1})

    def fill_disk(state, handle):  # save_checkpoint hands torch.save an open file
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", fill_disk)
    with pytest.raises(CheckpointError) as error:
        save_checkpoint(path, {**model, "step": 2})
    assert str(path) in str(error.value) and "the disk is full" in str(error.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["step_1.pt"]  # no temporary file left


def test_random_states_round_trip_through_a_safe_checkpoint(tmp_path):
    import numpy as np

    state = capture_rng_state(torch.device("cpu"))
    save_checkpoint(tmp_path / "rng.pt", {"rng_state": state})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng_state"], torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_a_gpu_runs_random_state_restores_on_a_cpu(tmp_path):
    # A GPU run's checkpoint (this GPU's CUDA state, or every GPU's in an older one) resumed on a CPU: the
    # CPU's states are restored, the CUDA one left alone (tests/gpu/ restores it on a GPU).
    state = capture_rng_state(torch.device("cpu"))
    expected = torch.rand(1)
    for cuda in (torch.zeros(16, dtype=torch.uint8), [torch.zeros(16, dtype=torch.uint8)] * 2):
        save_checkpoint(tmp_path / "rng.pt", {"rng_state": {**state, "cuda": cuda}})
        restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng_state"], torch.device("cpu"))
        assert torch.equal(torch.rand(1), expected)


def test_damaged_and_missing_checkpoints_are_one_line_errors(tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="damaged or not a checkpoint"):
        load_checkpoint(damaged)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="/dev/null is not a file; pass a .pt file"):
        load_checkpoint(Path("/dev/null"))


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_carrying_code_are_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "payload": Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert "code ran" not in capsys.readouterr().out


MODEL_CONFIG = {
    "vocab_size": 512,
    "block_size": 128,
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 64,
    "dropout": 0.0,
    "bias": False,
}


NOT_CHECKPOINTS = {
    "a list": [1, 2, 3],
    "an empty dict": {},
    "no model": {"step": 3},
    "weights that are not tensors": {"model_state_dict": {"w": 1}, "model_config": MODEL_CONFIG},
    "a vocabulary of 2e9": {"model_state_dict": {}, "model_config": {**MODEL_CONFIG, "vocab_size": 2_000_000_000}},
    "an unknown config key": {"model_state_dict": {}, "model_config": {**MODEL_CONFIG, "n_expert": 8}},
    "a string for a size": {"model_state_dict": {}, "model_config": {**MODEL_CONFIG, "n_layer": "4"}},
    "a float for a size": {"model_state_dict": {}, "model_config": {**MODEL_CONFIG, "n_layer": 1.0}},
    "more layers than its weights": {"model_state_dict": {"w": torch.zeros(1000)}, "model_config": MODEL_CONFIG},
    "heads that do not divide the width": {"model_state_dict": {}, "model_config": {**MODEL_CONFIG, "n_head": 3}},
}


@pytest.mark.parametrize("case", NOT_CHECKPOINTS)
def test_pickle_free_data_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path, case):
    path = tmp_path / "odd.pt"
    torch.save(NOT_CHECKPOINTS[case], path)
    with pytest.raises(CheckpointError, match="is not a fragment-llm checkpoint") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_model_checkpoint_cannot_be_resumed_and_a_folder_is_not_a_checkpoint(tmp_path):
    from fragment_llm.model.gpt import GPT, GPTConfig

    path = tmp_path / "model.pt"
    torch.save({"model_state_dict": GPT(GPTConfig(**MODEL_CONFIG)).state_dict(), "model_config": MODEL_CONFIG}, path)
    load_checkpoint(path)  # enough for the tools
    with pytest.raises(CheckpointError, match="it lacks optimizer_state_dict"):
        find_resume_checkpoint(path)
    with pytest.raises(CheckpointError, match="is a directory; pass a .pt file"):
        load_checkpoint(tmp_path)
