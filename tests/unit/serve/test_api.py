"""The OpenAI API's requests (serve/api.py): a body checked into what the engine runs, and each mistake
refused with OpenAI's status, error shape, param and code."""

from __future__ import annotations

import pytest

from fragment_llm.data.chat import chat_ids, stop_ids
from fragment_llm.data.tokenizer import end_of_text_id
from fragment_llm.serve.api import APIError, Served, chat_request, completion_request, parse_body

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def served(trained):
    return Served("tiny", trained.tokenizer, trained.config.block_size, "outputs/tiny")


def refusal(parse, body, served) -> APIError:
    with pytest.raises(APIError) as caught:
        parse(body, served)
    error = caught.value.body()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return caught.value


def test_a_chat_request_is_the_conversation_in_the_chat_format(served):
    request = chat_request({"model": "tiny", "messages": HELLO, "n": 3, "seed": 5, "stop": "\n"}, served)
    assert request.prompt == chat_ids(served.tokenizer, HELLO, generation_prompt=True)[0]
    assert request.stop_ids == stop_ids(served.tokenizer) and request.stops == ["\n"]
    assert (request.n, request.seed, request.stream) == (3, 5, False)
    assert request.max_tokens == served.block_size - len(request.prompt)  # what the context leaves
    assert request.sampling.temperature == 1.0 and request.sampling.top_p == 1.0 and request.sampling.top_k == 0


def test_text_parts_and_the_developer_role_are_read_as_openai_sends_them(served):
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]}]
    request = chat_request({"model": "tiny", "messages": [*parts, *HELLO]}, served)
    expected = [{"role": "system", "content": "Be brief."}, *HELLO]
    assert request.prompt == chat_ids(served.tokenizer, expected, generation_prompt=True)[0]


def test_a_completion_continues_text_to_the_end_of_a_document(served):
    request = completion_request({"model": "tiny", "prompt": "The", "max_tokens": 5, "top_p": 0}, served)
    assert request.stop_ids == {end_of_text_id(served.tokenizer)} and request.max_tokens == 5
    assert request.sampling.temperature == 0  # top_p 0 keeps only the likeliest token: greedy
    assert completion_request({"model": "tiny", "prompt": "The"}, served).max_tokens == 16  # OpenAI's default


def test_invalid_json_and_a_body_that_is_no_object_are_refused():
    for raw in (b"{bad", b"\xff\xfe", b"[1, 2]"):
        with pytest.raises(APIError) as caught:
            parse_body(raw)
        assert caught.value.status == 400


BAD_CHATS = {
    "no model": ({"messages": HELLO}, 400, "model", "missing_required_parameter"),
    "unknown model": ({"model": "gpt-4o", "messages": HELLO}, 404, "model", "model_not_found"),
    "no messages": ({"model": "tiny"}, 400, "messages", "missing_required_parameter"),
    "empty messages": ({"model": "tiny", "messages": []}, 400, "messages", "invalid_value"),
    "unknown role": (
        {"model": "tiny", "messages": [{"role": "robot", "content": "beep"}]},
        400,
        "messages[0].role",
        "invalid_value",
    ),
    "no content": (
        {"model": "tiny", "messages": [{"role": "user"}]},
        400,
        "messages[0].content",
        "missing_required_parameter",
    ),
    "an image": (
        {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        400,
        "messages[0].content",
        "invalid_value",
    ),
    "negative max_tokens": ({"max_tokens": -1}, 400, "max_tokens", "integer_below_min_value"),
    "zero max_tokens": ({"max_tokens": 0}, 400, "max_tokens", "integer_below_min_value"),
    "huge max_tokens": ({"max_tokens": 10**12}, 400, "max_tokens", "context_length_exceeded"),
    "huge max_completion_tokens": (
        {"max_completion_tokens": 10**12},
        400,
        "max_completion_tokens",
        "context_length_exceeded",
    ),
    "text max_tokens": ({"max_tokens": "10"}, 400, "max_tokens", "invalid_type"),
    "prompt longer than the context": (
        {"messages": [{"role": "user", "content": "word " * 400}]},
        400,
        "messages",
        "context_length_exceeded",
    ),
    "temperature too high": ({"temperature": 5}, 400, "temperature", "decimal_above_max_value"),
    "negative top_p": ({"top_p": -0.5}, 400, "top_p", "decimal_below_min_value"),
    "n of 0": ({"n": 0}, 400, "n", "integer_below_min_value"),
    "n too large": ({"n": 1000}, 400, "n", "integer_above_max_value"),
    "n a boolean": ({"n": True}, 400, "n", "invalid_type"),
    "five stops": ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
    "a seed too large": ({"seed": 2**70}, 400, "seed", "integer_above_max_value"),
}


@pytest.mark.parametrize("case", BAD_CHATS, ids=str)
def test_a_bad_chat_request_gets_openais_error(case, served):
    body, status, param, code = BAD_CHATS[case]
    if "model" not in body and case != "no model":
        body = {"model": "tiny", "messages": HELLO, **body}
    error = refusal(chat_request, body, served)
    assert (error.status, error.param, error.code) == (status, param, code), error.message


def test_the_context_message_says_what_was_asked(served):
    error = refusal(chat_request, {"model": "tiny", "messages": HELLO, "max_tokens": 1000}, served)
    prompt = len(chat_ids(served.tokenizer, HELLO, generation_prompt=True)[0])
    assert error.message == (
        f"This model's maximum context length is {served.block_size} tokens. However, you requested "
        f"{prompt + 1000} tokens ({prompt} in the messages, 1000 in the completion). Please reduce the length of "
        "the messages or completion."
    )


def test_a_bad_completion_request_gets_openais_error(served):
    assert refusal(completion_request, {"model": "tiny"}, served).param == "prompt"
    assert refusal(completion_request, {"model": "tiny", "prompt": ["a", "b"]}, served).code == "invalid_value"
    long = refusal(completion_request, {"model": "tiny", "prompt": "word " * 400}, served)
    assert (long.param, long.code) == ("prompt", "context_length_exceeded")


def test_a_model_without_chat_tokens_refuses_chat_but_completes_text(trained_run, tmp_path):
    from helpers import pre_chat_run

    from fragment_llm.train.from_run import load_run

    old = load_run(pre_chat_run(trained_run, tmp_path))
    served = Served("old", old.tokenizer, old.config.block_size, "outputs/old")
    error = refusal(chat_request, {"model": "old", "messages": HELLO}, served)
    assert error.code == "model_not_chat" and "data=chat" in error.message
    assert completion_request({"model": "old", "prompt": "The"}, served).prompt
