"""Serving a run (`fragment-llm serve`) as a real process on a free port, talked to with OpenAI's own
Python client: README's snippet as written, answers whole and streamed (the same for the same seed),
n choices, stop strings, seeds, several clients at once, every bad request refused in OpenAI's error
shape while the server goes on serving, the API key, a client that goes away mid-stream freeing its
place, and Ctrl-C ending the server."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from helpers import ROOT, chatterbox_run, train_tiny_run

pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "What is a list?"}]
KEY = "sk-test-key"


class Server:
    """`fragment-llm serve RUN ARGS` in a process of its own; its log lines are read as they come (a
    full pipe would stall it)."""

    def __init__(self, run, *arguments):
        command = [sys.executable, "-m", "fragment_llm", "serve", str(run), "--port", "0", *arguments]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()
        if not self.ready.wait(timeout=180) or self.process.poll() is not None:
            self.process.kill()
            raise AssertionError(f"the server did not start: {self.lines}")
        self.url = re.search(r"on (http://\S+/v1) ", self.lines[0]).group(1)
        self.name = run.name

    def read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            self.ready.set()
        self.ready.set()

    def client(self, api_key="unused", **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=api_key, max_retries=0, timeout=120, **options)

    def logged(self, text: str, timeout: float = 30) -> str:
        """The log line holding `text`, once it is there."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no log line holds {text!r}: {self.lines}")

    def stop(self) -> None:
        """Ctrl-C: the server stops as every command does on it, with exit code 130 and no traceback."""
        self.process.send_signal(signal.SIGINT)
        try:
            assert self.process.wait(timeout=60) == 130, self.lines
        finally:
            self.process.kill()
        self.reader.join(timeout=30)  # every line it wrote
        assert not any("Traceback" in line for line in self.lines), self.lines


@pytest.fixture(scope="module")
def server(trained_run):
    server = Server(trained_run, "--parallel", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def talker(tmp_path_factory, corpus):
    """A chatterbox (it never ends an answer) with a context of 1024 tokens, for long answers, served
    one request at a time, with an API key."""
    root = tmp_path_factory.mktemp("talker")
    trained = train_tiny_run(root, corpus, **{"model.block_size": 1024, "train.max_iters": 2})
    server = Server(chatterbox_run(trained, root), "--parallel", "1", "--api-key", KEY)
    yield server
    server.stop()


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (snippet,) = [block for block in blocks if "from openai import OpenAI" in block]
    return snippet


def test_readmes_openai_snippet_works_as_shown(server):
    snippet = readme_snippet()
    assert "http://127.0.0.1:8000/v1" in snippet  # the port `fragment-llm serve` takes by default
    code = snippet.replace("http://127.0.0.1:8000/v1", server.url)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_model_list_names_the_run(server):
    assert server.url.startswith("http://127.0.0.1:")  # this machine only, without --host
    assert [model.id for model in server.client().models.list().data] == [server.name]
    assert server.client().models.retrieve(server.name).owned_by == "fragment-llm"


def test_a_streamed_answer_is_the_whole_answer_in_pieces(server):
    client = server.client()
    options = dict(model=server.name, messages=HELLO, max_tokens=30, seed=11, temperature=1.0)
    whole = client.chat.completions.create(**options)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert whole.usage.completion_tokens <= 30 and whole.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(**options, stream=True, stream_options={"include_usage": True}))
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_the_stream_is_server_sent_events_as_openai_sends_them(server):
    body = {"model": server.name, "prompt": "The", "max_tokens": 5, "stream": True, "temperature": 0}
    response = httpx.post(server.url + "/completions", json=body, timeout=60)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(event.startswith("data: {") for event in events[:-2])
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_n_choices_whole_and_streamed(server):
    client = server.client()
    options = dict(model=server.name, messages=HELLO, max_tokens=20, n=3, seed=5)
    whole = client.chat.completions.create(**options)
    assert [choice.index for choice in whole.choices] == [0, 1, 2]
    texts = {index: "" for index in range(3)}
    for chunk in client.chat.completions.create(**options, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert [texts[index] for index in range(3)] == [choice.message.content for choice in whole.choices]
    completions = client.completions.create(model=server.name, prompt="The", max_tokens=10, n=2, seed=5)
    assert [choice.index for choice in completions.choices] == [0, 1]


def test_a_stop_string_ends_the_answer_before_it(server):
    client = server.client()
    options = dict(model=server.name, prompt="The import statement", max_tokens=40, temperature=0)
    whole = client.completions.create(**options).choices[0].text
    assert len(whole) >= 6
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    stopped = client.completions.create(**options, stop=[stop, "never said"]).choices[0]
    assert stopped.text == whole[: whole.index(stop)] and stopped.finish_reason == "stop"
    streamed = client.completions.create(**options, stop=stop, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == stopped.text


def test_the_same_seed_gives_the_same_answer(server):
    client = server.client()
    options = dict(model=server.name, messages=HELLO, max_tokens=40, temperature=1.0)
    first, again, other = (client.chat.completions.create(**options, seed=seed) for seed in (7, 7, 8))
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content


def test_clients_at_once_get_what_each_gets_alone(server):
    client = server.client()

    def ask(seed):
        stream = client.chat.completions.create(
            model=server.name, messages=HELLO, max_tokens=30, seed=seed, stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream)

    alone = [ask(seed) for seed in range(5)]
    with ThreadPoolExecutor(5) as pool:  # five streams on two places: two answered in turn, the others wait
        assert list(pool.map(ask, range(5))) == alone


BAD_REQUESTS = {
    "invalid JSON": ("chat/completions", b'{"model": ', 400, None),
    "a body that is no object": ("chat/completions", b"[1, 2]", 400, None),
    "missing messages": ("chat/completions", {"model": "{model}"}, 400, "messages"),
    "unknown model": ("chat/completions", {"model": "gpt-4o", "messages": HELLO}, 404, "model"),
    "negative max_tokens": (
        "chat/completions",
        {"model": "{model}", "messages": HELLO, "max_tokens": -5},
        400,
        "max_tokens",
    ),
    "huge max_tokens": (
        "chat/completions",
        {"model": "{model}", "messages": HELLO, "max_tokens": 10**15},
        400,
        "max_tokens",
    ),
    "a prompt longer than the context": (
        "chat/completions",
        {"model": "{model}", "messages": [{"role": "user", "content": "word " * 500}]},
        400,
        "messages",
    ),
    "unknown role": (
        "chat/completions",
        {"model": "{model}", "messages": [{"role": "robot", "content": "hi"}]},
        400,
        "messages[0].role",
    ),
    "n of 0": ("chat/completions", {"model": "{model}", "messages": HELLO, "n": 0}, 400, "n"),
    "a completion without a prompt": ("completions", {"model": "{model}"}, 400, "prompt"),
    "an unknown route": ("chat/complete", {"model": "{model}", "messages": HELLO}, 404, None),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_a_bad_request_gets_openais_error_and_the_server_goes_on(case, server):
    path, body, status, param = BAD_REQUESTS[case]
    if isinstance(body, dict):
        body = json.dumps(body).replace("{model}", server.name).encode()
    response = httpx.post(f"{server.url}/{path}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]
    answer = server.client().chat.completions.create(model=server.name, messages=HELLO, max_tokens=3)
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_openais_client_raises_its_own_errors_for_them(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=server.name, messages=HELLO, max_tokens=10**9, stream=True)
    assert caught.value.code == "context_length_exceeded"


def test_the_api_key_is_required(talker):
    for key in ("wrong", ""):
        with pytest.raises(openai.AuthenticationError) as caught:
            talker.client(api_key=key or "unused", default_headers={"Authorization": key}).models.list()
        assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert talker.client(api_key=KEY).models.list().data[0].id == talker.name


def test_a_client_that_goes_away_mid_stream_frees_its_place(talker):
    body = {"model": talker.name, "messages": HELLO, "max_tokens": 1000, "n": 8, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{talker.url}/chat/completions", json=body, headers=headers, timeout=60) as response:
        lines = response.iter_lines()
        assert [next(lines) for _ in range(4)][2].startswith("data: {")  # the answers have begun
    # The only place was the stream's: the next request is answered once the engine has dropped it.
    client = talker.client(api_key=KEY)
    answer = client.chat.completions.create(model=talker.name, messages=HELLO, max_tokens=5, temperature=0)
    assert answer.usage.completion_tokens == 5
    assert talker.logged("the client went away; stopped (streamed, n=8)")
    assert talker.logged("5 tokens (whole, n=1)")


def test_a_client_that_stops_waiting_for_a_whole_answer_frees_its_place(talker):
    body = {"model": talker.name, "messages": HELLO, "max_tokens": 1000, "n": 32, "temperature": 0}
    headers = {"Authorization": f"Bearer {KEY}"}
    with pytest.raises(httpx.ReadTimeout):  # it gives up long before 32 answers of 1000 tokens
        httpx.post(f"{talker.url}/chat/completions", json=body, headers=headers, timeout=0.5)
    client = talker.client(api_key=KEY)
    answer = client.chat.completions.create(model=talker.name, messages=HELLO, max_tokens=6, temperature=0)
    assert answer.usage.completion_tokens == 6
    assert talker.logged("the client went away; stopped (whole, n=32)")
