"""The engine (serve/engine.py): stop strings found across tokens and never shown, requests answered in
turn with the same text as alone, n choices as one batch, and a cancelled request dropped."""

from __future__ import annotations

import queue

import pytest
import torch

from fragment_llm.data.chat import chat_ids, stop_ids
from fragment_llm.model.generate import Sampling, TextStream, generate_tokens
from fragment_llm.serve.api import Request
from fragment_llm.serve.engine import Engine, Job, StopText


def test_a_stop_string_split_over_pieces_is_found_and_never_shown():
    stops = StopText(["END", "\n\n"])
    assert stops.push("one E") == ("one ", False)  # "E" may begin "END": it waits
    assert stops.push("N") == ("", False)
    assert stops.push("D and more") == ("", True)
    stops = StopText(["END"])
    assert [stops.push(piece) for piece in ("a E", "x")] == [("a ", False), ("Ex", False)]
    assert stops.push("tail E") == ("tail ", False) and stops.flush() == "E"  # held text, at the end


def events_of(engine, request, cancel_after=None):
    """Run `request` through `engine`; its events, in order (a job cancelled after `cancel_after` texts)."""
    events: queue.Queue = queue.Queue()
    job = Job(request, events.put)
    engine.submit(job)
    seen, texts = [], 0
    while True:
        event = events.get(timeout=60)
        seen.append(event)
        texts += event[0] == "text"
        if cancel_after is not None and texts == cancel_after:
            job.cancel()
            return seen, job
        if event[0] in ("done", "error"):
            return seen, job


def answer(events, choice=0):
    return "".join(event[2] for event in events if event[0] == "text" and event[1] == choice)


def chat(trained, content, **options):
    prompt = chat_ids(trained.tokenizer, [{"role": "user", "content": content}], generation_prompt=True)[0]
    options = {"max_tokens": 40, "sampling": Sampling(temperature=1.0, top_k=0), "seed": 3, **options}
    return Request(chat=True, prompt=prompt, stop_ids=stop_ids(trained.tokenizer), **options)


@pytest.fixture(scope="module")
def engine(trained):
    engine = Engine(trained, parallel=2).start()
    yield engine
    engine.stop()


def test_an_answer_is_the_seeded_sample_and_ends_with_its_reason(trained, engine):
    request = chat(trained, "What is a list?")
    events, _ = events_of(engine, request)
    tokens = list(
        generate_tokens(
            trained.model,
            request.prompt,
            40,
            request.sampling,
            torch.Generator().manual_seed(3),
            stop_ids=request.stop_ids,
        )
    )
    stream = TextStream(trained.tokenizer)
    assert answer(events) == "".join(stream.push(token) for token in tokens)
    assert events[-2] == ("end", 0, "length" if len(tokens) == 40 else "stop") and events[-1] == ("done", len(tokens))


def test_requests_in_turn_give_what_each_gives_alone(trained, engine):
    requests = [chat(trained, f"Question {number}?", seed=number) for number in range(4)]
    alone = [answer(events_of(engine, request)[0]) for request in requests]
    outboxes = []
    for request in requests:  # four at once on two places: two answered in turn, two waiting
        outboxes.append(queue.Queue())
        engine.submit(Job(request, outboxes[-1].put))
    together = []
    for outbox in outboxes:
        events = [outbox.get(timeout=60)]
        while events[-1][0] != "done":
            events.append(outbox.get(timeout=60))
        together.append(answer(events))
    assert together == alone


def test_n_choices_are_one_batch_each_with_its_own_text(trained, engine):
    events, _ = events_of(engine, chat(trained, "What is a list?", n=3))
    assert sorted(event[1] for event in events if event[0] == "end") == [0, 1, 2]
    assert len({answer(events, choice) for choice in range(3)}) > 1
    again, _ = events_of(engine, chat(trained, "What is a list?", n=3))
    assert [answer(again, choice) for choice in range(3)] == [answer(events, choice) for choice in range(3)]


def test_a_stop_string_ends_a_choice_before_it(trained, engine):
    whole = answer(events_of(engine, chat(trained, "What is a list?", sampling=Sampling(temperature=0)))[0])
    assert len(whole) >= 6
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    events, _ = events_of(engine, chat(trained, "What is a list?", sampling=Sampling(temperature=0), stops=[stop]))
    assert answer(events) == whole[: whole.index(stop)] and ("end", 0, "stop") in events


def test_a_cancelled_request_is_dropped_and_the_next_one_answered(trained_run, tmp_path):
    from helpers import chatterbox_run

    from fragment_llm.train.from_run import load_run

    talker = load_run(chatterbox_run(trained_run, tmp_path))
    engine = Engine(talker, parallel=1).start()  # one place: the next request waits for it
    try:
        endless = chat(talker, "Talk", max_tokens=10**9, sampling=Sampling(temperature=0))
        events, job = events_of(engine, endless, cancel_after=5)
        following, _ = events_of(engine, chat(talker, "Talk", max_tokens=5, sampling=Sampling(temperature=0)))
        assert following[-1] == ("done", 5)
        assert not any(event[0] in ("end", "done") for event in events)
    finally:
        engine.stop()
