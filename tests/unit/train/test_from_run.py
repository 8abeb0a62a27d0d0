"""Continuing or deriving a run (train/from_run.py): the checkpoint a resume takes (the highest step, the
previous one when the newest is damaged), an older checkpoint's settings in today's keys, and a folder
that is not a run refused with the fix."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil

import pytest
import torch
from helpers import settings_for, small_gpt, tiny_overrides, train_tiny_run

from fragment_llm.config.load import to_plain
from fragment_llm.config.schema import CompileMode
from fragment_llm.config.shape import Position
from fragment_llm.launch import conf
from fragment_llm.model.gpt import GPT, GPTConfig
from fragment_llm.runs.records import RunError
from fragment_llm.train.checkpoint import CheckpointError
from fragment_llm.train.from_run import find_resume_checkpoint, load_run, resume_settings, with_vocabulary
from fragment_llm.train.trainer import Trainer


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, corpus, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    keys = {"train.max_iters": 12, "train.save_interval": 4}
    Trainer(settings_for(tiny_overrides(tmp_path, corpus, **keys)), run_dir).fit()
    final, last = run_dir / "models" / "final_model.pt", run_dir / "checkpoints" / "last.pt"
    final.write_bytes(final.read_bytes()[:1000])  # a truncated copy
    last.write_bytes(last.read_bytes()[:1000])  # and its copy, the newest state at step 12
    with caplog.at_level(logging.WARNING, logger="fragment_llm"):
        path, checkpoint = find_resume_checkpoint(run_dir)
    assert path.name == "step_8.pt" and checkpoint["step"] == 8
    assert "final_model.pt is damaged" in caplog.text
    with pytest.raises(CheckpointError, match="final_model.pt is damaged or not a checkpoint"):
        find_resume_checkpoint(final)
    with pytest.raises(CheckpointError, match="does not exist; give a run directory or a checkpoint file"):
        find_resume_checkpoint(tmp_path / "nowhere")


def test_resume_picks_the_highest_step_not_the_newest_file(tmp_path, corpus):
    run_dir = train_tiny_run(tmp_path, corpus, **{"train.max_iters": 12, "train.save_interval": 4})
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)  # like cp -r: last.pt is a copy now, and file times are new
    os.utime(copy / "checkpoints" / "step_4.pt")  # the oldest state has the newest file time
    path, checkpoint = find_resume_checkpoint(copy)
    assert checkpoint["step"] == 12 and path.name == "final_model.pt"
    (copy / "models" / "final_model.pt").unlink()
    (copy / "checkpoints" / "last.pt").unlink()
    assert find_resume_checkpoint(copy)[1]["step"] == 8


def test_an_older_checkpoints_settings_resume_in_todays_keys():
    """A checkpoint from before `train.checkpoint_every` was renamed, before the layout keys and
    cautious weight decay existed, and from when hardware.compile was a bool: its model is GPT-2's
    layout, its epoch checkpoints keep their interval, its compile setting holds, and the keys it lacks
    in sections a resumed run may change take this command's value."""
    saved = to_plain(settings_for(["train.checkpoint_every_epochs=2"]))
    saved["train"]["checkpoint_every"] = saved["train"].pop("checkpoint_every_epochs")
    for key in (
        "position",
        "norm",
        "qk_norm",
        "activation",
        "tie_embeddings",
        "zero_init",
        "logit_softcap",
        "value_embeddings",
        "residual_scalars",
        "embed_norm",
    ):
        del saved["model"][key]
    del saved["optimizer"]["cautious_weight_decay"]
    saved["hardware"]["compile"] = True
    settings = resume_settings(conf.compose(["train.max_iters=20"]), saved, ["train.max_iters=20"])
    assert settings.train.checkpoint_every_epochs == 2 and settings.train.max_iters == 20
    assert settings.model.position is Position.learned and settings.model.activation.value == "gelu"
    assert settings.model.value_embeddings is False and settings.optimizer.cautious_weight_decay is False
    assert settings.hardware.compile is CompileMode.true


def test_a_folder_that_is_not_a_run_is_refused_with_the_fix(tmp_path, trained_run):
    with pytest.raises(RunError, match="is not a run directory"):
        load_run(tmp_path)
    with pytest.raises(RunError, match="is not a directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text((trained_run / "tokenizer.json").read_text())
    with pytest.raises(RunError, match=r"has no model \(models/final_model.pt\).*--checkpoint"):
        load_run(tmp_path)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_a_parent_without_the_chat_tokens_gets_its_vocabulary_rows_grown(tie_embeddings):
    """A chat fine-tune adds the chat tokens after an older tokenizer's vocabulary: every vocabulary table
    (token embedding, head, value embeddings) gets rows for them, and for the padding after them, as the
    mean of the parent's token rows; the parent's own rows and every other weight stay as they were."""
    model = small_gpt(tie_embeddings=tie_embeddings, value_embeddings=True)  # 300 tokens: 320 rows
    parent = {"model_config": dataclasses.asdict(model.config), "model_state_dict": model.state_dict()}
    assert with_vocabulary(parent, 300) is parent and with_vocabulary(parent, 250) is parent
    grown = with_vocabulary(parent, 324)  # 384 rows
    assert grown["model_config"]["vocab_size"] == 324
    tables = [key for key, value in grown["model_state_dict"].items() if value.dim() and value.shape[0] == 384]
    assert sorted(tables) == sorted(["wte.weight", "lm_head.weight", "value_embeds.0.weight", "value_embeds.2.weight"])
    for key, value in parent["model_state_dict"].items():
        new = grown["model_state_dict"][key]
        if key in tables:
            assert torch.equal(new[:300], value[:300])
            assert torch.allclose(new[300:], value[:300].mean(0).expand(84, -1))
        else:
            assert torch.equal(new, value)
    bigger = GPT(GPTConfig(**grown["model_config"]))
    bigger.load_state_dict(grown["model_state_dict"])
    assert (bigger.lm_head.weight is bigger.wte.weight) == tie_embeddings
