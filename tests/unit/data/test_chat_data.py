"""Conversations as training data (data/chat_data.py, data/chat_batches.py): one conversation per row from
its start, only the assistant's ids learned (every other target -1), an even share held out, a conversation
longer than the block one line or skipped, and the cache entry reused, checked and rebuilt."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from fragment_llm.config.schema import ConfigError, DataConfig, DataSource
from fragment_llm.data import tokenizer as tokenizer_module
from fragment_llm.data.chat import chat_ids
from fragment_llm.data.chat_batches import NOT_LEARNED
from fragment_llm.data.chat_data import held_out, prepare_chat_data
from fragment_llm.data.tokenizer import end_of_text_id, train_tokenizer

BLOCK = 64
CPU = torch.device("cpu")


def conversation(index: int) -> list[dict[str, str]]:
    turns = [
        {"role": "user", "content": f"What is item {index}?"},
        {"role": "assistant", "content": f"Item {index} is a thing."},
    ]
    if index % 3 == 0:
        turns = [{"role": "system", "content": "Be brief."}, *turns, {"role": "user", "content": "More?"}]
        turns.append({"role": "assistant", "content": "No more."})
    return turns


def write_conversations(path, count=40, extra=()):
    lines = [json.dumps({"messages": conversation(index)}) for index in range(count)] + list(extra)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prepare(path, cache, tokenizer=None, block_size=BLOCK, **keys):
    data = DataConfig(source=DataSource.chat, path=str(path), val_fraction=keys.pop("val_fraction", 0.1), **keys)
    return prepare_chat_data(data, 300, block_size, 2, False, cache, tokenizer=tokenizer)


@pytest.fixture
def prepared(tmp_path):
    return prepare(write_conversations(tmp_path / "talk.jsonl"), tmp_path / "cache")


def rows(tokens, block_size=BLOCK):
    return tokens[:-1].reshape(-1, block_size)


def test_only_the_assistants_ids_are_targets(prepared):
    """Every training and validation window: the targets that are not -1 are exactly the ids chat_ids marks
    learned (the assistant's words and the <|end|> closing each of its turns), nothing of the user or the
    system, no role token, no padding."""
    tokenizer = prepared.tokenizer
    train_ids = [index for index in range(40) if not held_out(index, 0.1)]
    batches = prepared.train_batches(BLOCK, len(train_ids), seed=0, device=CPU)
    inputs, targets = batches.next_batch()
    order = [int(np.flatnonzero((rows(prepared.train) == row.numpy()).all(1))[0]) for row in inputs]
    for row, (window, target) in zip(order, zip(inputs, targets)):
        ids, learned = chat_ids(tokenizer, conversation(train_ids[row]))
        expected = [ids[i + 1] if i + 1 < len(ids) and learned[i + 1] else NOT_LEARNED for i in range(BLOCK)]
        assert target.tolist() == expected
        assert window[: len(ids)].tolist() == ids
    answers = tokenizer.decode([t for t in targets[order.index(0)].tolist() if t >= 0], skip_special_tokens=False)
    assert answers == "Item 0 is a thing.<|end|>No more.<|end|>"
    (val_inputs, val_targets), *_ = list(prepared.eval_batches(prepared.sources[0], BLOCK, 8, 1, CPU))
    ids, learned = chat_ids(tokenizer, conversation(9))  # the first held-out one
    assert (val_targets[0] >= 0).sum() == sum(learned)


def test_each_window_is_one_conversation_from_its_start(prepared):
    """No window holds a second conversation, so no position can attend to another conversation: after a
    conversation's ids the row is padding (<|endoftext|>), never learned, up to the next row's start."""
    end_of_text = end_of_text_id(prepared.tokenizer)
    for tokens, learned in ((prepared.train, prepared.train_learned), (prepared.val, prepared.val_learned)):
        for row, mask in zip(rows(tokens), rows(learned)):
            assert row[0] == end_of_text and row[1] != end_of_text  # a conversation starts every row
            assert (row[1:] == end_of_text).sum() == BLOCK - 1 - np.argmax(row[1:] == end_of_text)  # then padding
            assert not mask[row == end_of_text].any()
        assert tokens[-1] == end_of_text and not learned[-1]  # the last window's last target


def test_validation_holds_out_an_even_share_of_the_conversations(prepared):
    assert [index for index in range(40) if held_out(index, 0.1)] == [9, 19, 29, 39]
    assert len(rows(prepared.train)) == 36 and len(rows(prepared.val)) == 4
    learned_bytes = sum(
        len(message["content"].encode())
        for index in (9, 19, 29, 39)
        for message in conversation(index)
        if message["role"] == "assistant"
    )
    assert prepared.val_scored(prepared.sources[0]) == (int(prepared.val_learned.sum()), learned_bytes)
    assert prepared.train_bytes > prepared.val_bytes == learned_bytes


def test_a_conversation_longer_than_the_block_is_one_line_or_skipped(tmp_path, caplog):
    long = json.dumps({"messages": [{"role": "user", "content": "word " * 80}, {"role": "assistant", "content": "ok"}]})
    path = write_conversations(tmp_path / "talk.jsonl", extra=[long])
    with pytest.raises(ConfigError) as raised:
        prepare(path, tmp_path / "cache")
    assert str(raised.value).startswith(f"data: {path} line 41 is a conversation of ")
    assert (
        "longer than model.block_size=64; shorten it or split it into several, or set data.skip_bad_records=true"
        in (str(raised.value))
    )
    assert not list((tmp_path / "cache" / "tokens").rglob("*.bin"))  # nothing half-written
    with caplog.at_level(logging.WARNING, logger="fragment_llm"):
        prepared = prepare(path, tmp_path / "cache", skip_bad_records=True)
    skipped = "skipped 1 conversation longer than model.block_size=64 (data.skip_bad_records=true); the first:"
    assert f"{skipped} {path} line 41" in caplog.text
    assert len(rows(prepared.train)) + len(rows(prepared.val)) == 40


def test_a_split_without_conversations_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"the validation split holds no conversations \(5 conversations, data.val_f"):
        prepare(write_conversations(tmp_path / "talk.jsonl", count=5), tmp_path / "cache")


def test_the_cache_entry_is_reused_checked_and_rebuilt(tmp_path, caplog):
    path = write_conversations(tmp_path / "talk.jsonl")
    first = np.array(prepare(path, tmp_path / "cache").train_learned)
    (entry,) = (tmp_path / "cache" / "tokens").iterdir()
    assert sorted(file.name for file in entry.iterdir()) == [
        "meta.json",
        "train.bin",
        "train.mask",
        "val.bin",
        "val.mask",
    ]
    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        again = prepare(path, tmp_path / "cache")
    assert "encoding" not in caplog.text and np.array_equal(first, again.train_learned)
    mask = entry / "train.mask"
    mask.write_bytes(bytes(len(mask.read_bytes())))  # every id unlearned: the checksum tells
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        rebuilt = prepare(path, tmp_path / "cache")
    assert "train.mask does not match meta.json" in caplog.text and "encoding" in caplog.text
    assert np.array_equal(first, rebuilt.train_learned)
    other_block = prepare(path, tmp_path / "cache", block_size=32)  # a block size is an entry of its own
    assert len(other_block.train) == 36 * 32 + 1


def test_a_tokenizer_without_the_chat_tokens_gets_them_after_its_vocabulary(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tokenizer_module, "CHAT_TOKENS", ())  # as tokenizers were trained before they were reserved
    old = train_tokenizer([f"What is item {index}? Item {index} is a thing." for index in range(50)], 300, 2)
    monkeypatch.undo()
    before = old.get_vocab_size()
    assert old.token_to_id("<|user|>") is None
    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        prepared = prepare(write_conversations(tmp_path / "talk.jsonl"), tmp_path / "cache", tokenizer=old)
    assert prepared.vocab_size == before + 4
    assert [
        prepared.tokenizer.token_to_id(token) for token in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    ] == [
        before,
        before + 1,
        before + 2,
        before + 3,
    ]
    assert (
        f"lacks the chat tokens (trained before they were reserved): added as ids {before}-{before + 3}" in caplog.text
    )
    assert prepared.train.max() == before + 3
