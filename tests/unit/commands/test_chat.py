"""`fragment-llm chat` (commands/chat.py) in this process: a conversation piped in (text, or JSON Lines
of messages) is answered as the model answers its ids; in a terminal, /reset starts over, the oldest
turns go when the history outgrows the context, and a run without chat tokens is one error line.
Ctrl-C in a real terminal: journeys/test_chat.py."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch
from helpers import assert_one_error_line, call, pre_chat_run

from fragment_llm.data.chat import chat_ids, stop_ids
from fragment_llm.model.generate import Sampling, TextStream, generate_tokens

GREEDY = ["--temperature", "0", "--max-new-tokens", "20"]


class Terminal(io.StringIO):
    """Standard input as a terminal, with these lines typed."""

    def isatty(self) -> bool:
        return True


def greedy_answer(trained, messages, max_new_tokens=20):
    ids = chat_ids(trained.tokenizer, messages, generation_prompt=True)[0]
    tokens = generate_tokens(
        trained.model, ids, max_new_tokens, Sampling(0), torch.Generator(), stop_ids=stop_ids(trained.tokenizer)
    )
    stream = TextStream(trained.tokenizer)
    return "".join(stream.push(token) for token in tokens)


def chat(run, capsys, monkeypatch, typed, *options, terminal=False):
    monkeypatch.setattr(sys, "stdin", (Terminal if terminal else io.StringIO)(typed))
    return call(["chat", run, *options], capsys)


def test_piped_text_is_one_message_and_its_answer_is_printed(trained_run, trained, capsys, monkeypatch):
    code, out, err = chat(trained_run, capsys, monkeypatch, "What is a list?\n", *GREEDY)
    assert (code, err) == (0, "")
    assert out == greedy_answer(trained, [{"role": "user", "content": "What is a list?"}]) + "\n"


def test_piped_json_lines_are_the_conversation_after_the_system_prompt(trained_run, trained, capsys, monkeypatch):
    messages = [
        {"role": "user", "content": "What is a list?"},
        {"role": "assistant", "content": "A sequence."},
        {"role": "user", "content": "And a tuple?"},
    ]
    typed = "\n".join(json.dumps(message) for message in messages) + "\n\n"
    code, out, _ = chat(trained_run, capsys, monkeypatch, typed, *GREEDY, "--system", "Be brief.")
    assert code == 0
    assert out == greedy_answer(trained, [{"role": "system", "content": "Be brief."}, *messages]) + "\n"


@pytest.mark.parametrize(
    "typed, needle",
    [
        ("", "standard input is empty"),
        ('{"role": "user", "content": "hi"}\n{"role": "user"', "standard input line 2 is not JSON"),
        ('{"role": "user", "content": "hi"}\n\n{"role": "robot", "content": "beep"}', "line 3 is not a message"),
        ('{"role": "system", "content": "Be kind."}\n{"role": "user", "content": "hi"}', "and so has --system"),
    ],
)
def test_a_bad_piped_conversation_is_one_error_line(typed, needle, trained_run, capsys, monkeypatch):
    code, _, err = chat(trained_run, capsys, monkeypatch, typed, "--system", "Be brief.")
    assert_one_error_line(code, err, needle)


def test_a_system_prompt_too_long_for_the_context_is_one_error_line(trained_run, capsys, monkeypatch):
    code, _, err = chat(trained_run, capsys, monkeypatch, "hi", "--system", "Be brief. " * 100)
    assert_one_error_line(code, err, "the system prompt alone takes", "shorten it")


def test_a_run_without_chat_tokens_is_one_error_line(trained_run, tmp_path, capsys, monkeypatch):
    code, _, err = chat(pre_chat_run(trained_run, tmp_path), capsys, monkeypatch, "hi")
    assert_one_error_line(code, err, "has no chat tokens", "data=chat", "train.init_from=")


def test_reset_starts_the_conversation_over(trained_run, trained, capsys, monkeypatch):
    code, out, err = chat(
        trained_run, capsys, monkeypatch, "hi\n/reset\nhi\nhi\n/quit\nnever read\n", *GREEDY, terminal=True
    )
    first = greedy_answer(trained, [{"role": "user", "content": "hi"}])
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first}]
    second = greedy_answer(trained, [*history, {"role": "user", "content": "hi"}])
    assert code == 0 and "(a new conversation)" in err and "/reset starts over" in err
    assert out == f"> {first}\n> > {first}\n> {second}\n> "


def test_the_oldest_turns_go_and_a_message_too_long_is_refused(trained_run, capsys, monkeypatch):
    question = "What does the import statement do with the modules it finds on the path? "
    # About 34 tokens a question, 22 an answer: the context (less 20 for the answer) holds two turns, not three.
    typed = f"{question}\n{question}\n{question}\n{question * 10}\n{question}\n/rset\n"  # then Ctrl-D
    code, out, err = chat(trained_run, capsys, monkeypatch, typed, *GREEDY, terminal=True)
    assert code == 0 and out.count("\n") == 5 and out.endswith("> > \n")
    notes = err.splitlines()[1:]
    assert notes[0] == "(2 of the oldest messages dropped to fit the context)"
    assert notes[1].startswith("error: the message takes ") and notes[1].endswith("; shorten it")
    assert notes[2] == "(2 of the oldest messages dropped to fit the context)"
    assert notes[3] == "/rset is no command: /reset, /quit, /exit, /help"
