"""Chat fine-tuning (`data=chat data.path=... train.init_from=RUN`): a pretrained run learns to answer, its
loss on held-out conversations going down; a run from before the chat tokens fine-tunes with its vocabulary
rows grown; a chat fine-tune resumes bit for bit; bad conversations are one line; and the demo recipe
pretrains on pydoc and fine-tunes on the bundled conversations in one command."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import RUN, one_error_line, run_in_process, tiny_overrides, train_tiny_run

from fragment_llm.data import tokenizer as tokenizer_module
from fragment_llm.launch import conf
from fragment_llm.launch.job import run_job
from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import load_checkpoint
from fragment_llm.train.from_run import load_run

CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


def conversation(index: int) -> dict:
    colour = ("red", "green", "blue", "white")[index % 4]
    messages = [
        {"role": "user", "content": f"What colour is box {index}?"},
        {"role": "assistant", "content": f"Box {index} is {colour}."},
    ]
    if index % 5 == 0:
        messages.insert(0, {"role": "system", "content": "Answer in one sentence."})
    return {"messages": messages}


@pytest.fixture(scope="module")
def conversations(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "boxes.jsonl"
    path.write_text("".join(json.dumps(conversation(index)) + "\n" for index in range(200)), encoding="utf-8")
    return path


def chat_overrides(root, conversations, parent=None, **keys) -> list[str]:
    """The tiny run's overrides on `conversations`: with a parent, no model key (the parent's model)."""
    overrides = [
        item
        for item in tiny_overrides(root, conversations, **{"data": "chat", **keys})
        if not (parent and item.startswith("model."))
    ]
    return overrides + ([f"train.init_from={parent}"] if parent else [])


def chat_run(root, name, overrides):
    run_dir = root / name
    return run_dir, run_job(conf.compose(overrides), run_dir, overrides)


@pytest.fixture(scope="module")
def parent(tmp_path_factory, corpus):
    return train_tiny_run(tmp_path_factory.mktemp("chat_parent"), corpus)


@pytest.mark.slow
def test_a_chat_fine_tune_learns_to_answer(parent, conversations):
    run_dir, best = chat_run(parent.parent, "chat", chat_overrides(parent.parent, conversations, parent))
    summary = read_summary(run_dir)
    assert best < float("inf") and summary["status"] == "completed", summary.get("error")
    # Step 0 scores the parent on the held-out conversations' answers; the fine-tune lowers it a lot.
    assert summary["best_val_loss"] < summary["initial_val_loss"] - 1.0
    # A run trained since tokenizers reserve the chat tokens keeps its tokenizer and model as they are.
    assert (run_dir / "tokenizer.json").read_text() == (parent / "tokenizer.json").read_text()
    parent_model = load_checkpoint(parent / "models" / "final_model.pt")
    assert load_checkpoint(run_dir / "models" / "final_model.pt")["model_config"] == parent_model["model_config"]
    # `eval` scores text: for the held-out conversations it names the summary's figures.
    one_error_line(
        run_in_process(["-m", "fragment_llm", "eval", str(run_dir)], cwd=run_dir), "fine-tuned on conversations"
    )


@pytest.mark.slow
def test_a_run_from_before_the_chat_tokens_fine_tunes_with_its_rows_grown(tmp_path, corpus, conversations, monkeypatch):
    monkeypatch.setattr(tokenizer_module, "CHAT_TOKENS", ())  # tokenizers as they were trained before
    old = train_tiny_run(tmp_path / "old", corpus)
    monkeypatch.undo()
    old_model = load_checkpoint(old / "models" / "final_model.pt")
    vocabulary = old_model["model_config"]["vocab_size"]
    assert load_run(old).tokenizer.token_to_id("<|user|>") is None

    run_dir, best = chat_run(tmp_path, "chat", chat_overrides(tmp_path, conversations, old))
    summary = read_summary(run_dir)
    assert best < float("inf") and summary["best_val_loss"] < summary["initial_val_loss"], summary.get("error")
    chat = load_run(run_dir)  # the tools load it: its tokenizer and its grown model agree
    assert chat.config.vocab_size == vocabulary + 4
    assert [chat.tokenizer.token_to_id(token) for token in CHAT_TOKENS] == list(range(vocabulary, vocabulary + 4))
    log = (run_dir / "train.log").read_text()
    assert f"the vocabulary's rows grown from {vocabulary} to {vocabulary + 4} tokens" in log


@pytest.mark.slow
def test_a_chat_fine_tune_resumes_bit_for_bit(parent, conversations, tmp_path):
    keys = {"train.max_iters": 20, "train.save_interval": 10, "model.dropout": 0.1}
    whole, _ = chat_run(tmp_path, "whole", chat_overrides(tmp_path, conversations, parent, **keys))
    step_10 = whole / "checkpoints" / "step_10.pt"
    overrides = [item for item in chat_overrides(tmp_path, conversations, parent, **keys) if "init_from" not in item]
    resumed, best = chat_run(tmp_path, "resumed", overrides + [f"train.resume={step_10}"])
    assert best < float("inf")
    first, second = (load_checkpoint(run / "models" / "final_model.pt") for run in (whole, resumed))
    assert first["step"] == second["step"] == 20 and first["data_position"] == second["data_position"]
    for key, tensor in first["model_state_dict"].items():
        assert torch.equal(tensor, second["model_state_dict"][key]), key


@pytest.mark.slow
@pytest.mark.parametrize(
    "line, needle",
    [
        ("not json", "line 3 is not JSON (Expecting value at column 1)"),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "line 3 has an unknown role `bot` in message 1"),
        ('{"conversations": [{"from": "human", "value": "hi"}]}', "line 3 has no assistant turn"),
        (json.dumps({"instruction": "Say it.", "output": "word " * 200}), "line 3 is a conversation of "),
    ],
)
def test_a_bad_conversation_is_one_line_naming_file_line_and_fix(parent, tmp_path, line, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(conversation(index)) + "\n" for index in range(2)) + line + "\n")
    result = run_in_process([RUN, *chat_overrides(tmp_path, bad, parent)], cwd=tmp_path)
    one_error_line(result, f"error: data: {bad} {needle}")
    assert "set data.skip_bad_records=true to skip such" in result.stderr


@pytest.mark.slow
def test_the_demo_recipe_pretrains_on_pydoc_then_fine_tunes_in_one_command(tmp_path):
    """experiment=chat_demo, shortened: <run>/pretrain is a run of its own on pydoc, and the run fine-tunes
    from its model on the bundled demo conversations (no data.path)."""
    keys = {"data.pretrain_iters": 20, "train.max_iters": 20, "train.eval_interval": 10, "train.eval_iters": 4}
    overrides = [
        "experiment=chat_demo",
        *(
            item
            for item in tiny_overrides(tmp_path, tmp_path, **keys)
            if not item.startswith("data=") and "data.path" not in item
        ),
    ]
    run_dir = tmp_path / "demo"
    result = run_in_process([RUN, *overrides, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    pretrained, summary = read_summary(run_dir / "pretrain"), read_summary(run_dir)
    assert (
        pretrained["status"] == "completed" and pretrained["steps"] == 20 and pretrained["choices"]["data"] == "pydoc"
    )
    assert summary["status"] == "completed" and summary["steps"] == 20
    assert summary["init_from"] == str(run_dir / "pretrain" / "models" / "final_model.pt")
    assert summary["best_val_loss"] < summary["initial_val_loss"]
    assert (run_dir / "tokenizer.json").read_text() == (run_dir / "pretrain" / "tokenizer.json").read_text()
    log = (run_dir / "train.log").read_text()
    assert "Pretraining on data=pydoc for 20 steps" in log and "the bundled demo conversations" in log
