"""`fragment-llm serve RUN --bench 1,8`: tokens per second through the real server, with 1, 8, ...
clients streaming at once. The server is a process of its own, started as `fragment-llm serve` starts
it; the clients are threads of this one, talking HTTP as any client does, so they take no time from it."""

from __future__ import annotations

import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from ..errors import UserError
from .api import Served

PROMPT = "Tell me about lists."
ROUNDS = 10  # answers each client streams, one after another
START_TIMEOUT_S = 300


@dataclass
class Stream:
    """One client's streamed answer: its tokens, and how long its first text took (0: none came)."""

    tokens: int = 0
    first_s: float = 0.0


def stream_once(base: str, served: Served, max_tokens: int, seed: int) -> Stream:
    """One streamed request, read to `data: [DONE]`; its tokens are the usage the server counted."""
    started, address = time.perf_counter(), urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=600)
    body = {"model": served.name, "max_tokens": max_tokens, "seed": seed, "stream": True}
    body["stream_options"] = {"include_usage": True}
    if served.chats:
        path, body["messages"] = "/chat/completions", [{"role": "user", "content": PROMPT}]
    else:
        path, body["prompt"] = "/completions", PROMPT
    connection.request("POST", address.path + path, json.dumps(body), {"Content-Type": "application/json"})
    response, stream = connection.getresponse(), Stream()
    for line in response:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[len(b"data: ") :])
        choice = chunk["choices"][0] if chunk["choices"] else {}
        if not stream.first_s and (choice.get("delta", {}).get("content") or choice.get("text")):
            stream.first_s = time.perf_counter() - started  # the first text (a chat's first chunk has none)
        if chunk.get("usage"):
            stream.tokens = chunk["usage"]["completion_tokens"]
    connection.close()
    return stream


def clients_at_once(base: str, served: Served, clients: int, max_tokens: int) -> dict:
    """`clients` clients at once, each streaming ROUNDS answers one after another."""
    started, streams = time.perf_counter(), [[] for _ in range(clients)]

    def client(number: int) -> None:
        for round_ in range(ROUNDS):
            streams[number].append(stream_once(base, served, max_tokens, number * ROUNDS + round_))

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    answers = [stream for client_streams in streams for stream in client_streams]
    tokens = sum(stream.tokens for stream in answers)
    return {
        "clients": clients,
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "tokens_per_s_per_client": round(tokens / wall / clients, 1),
        "first_token_s": round(statistics.median(stream.first_s for stream in answers), 3),
    }


@contextmanager
def server_process(arguments: list[str]) -> Iterator[str]:
    """`fragment-llm serve ARGUMENTS --port 0` in a process of its own, while the block lasts: its URL."""
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "serve.log"
        with open(log, "w") as errors:
            command = [sys.executable, "-m", "fragment_llm", "serve", *arguments, "--port", "0"]
            env = {name: value for name, value in os.environ.items() if name != "FRAGMENT_LLM_API_KEY"}  # no key
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        try:
            deadline = time.time() + START_TIMEOUT_S
            while not (found := re.search(r" on (http://\S+/v1) ", log.read_text())):
                if process.poll() is not None or time.time() > deadline:
                    raise UserError(f"the server for the bench did not start: {log.read_text().strip()}")
                time.sleep(0.2)
            yield found.group(1)
        finally:
            process.terminate()
            process.wait()


def bench(arguments: list[str], served: Served, counts: list[int], max_tokens: int | None) -> list[dict]:
    """For each count, that many clients at once, each streaming ROUNDS answers of up to `max_tokens`
    tokens (None: half the context; the other half holds the prompt) from a server started with
    `arguments` (the run, its checkpoint, its name) answering max(counts) at once. Answers that end
    sooner count what they made."""
    tokens = max_tokens or served.block_size // 2
    results = []
    with server_process([*arguments, "--parallel", str(max(counts))]) as base:
        stream_once(base, served, 8, 0)  # warm up: the first forward passes are slow
        for clients in counts:
            results.append(clients_at_once(base, served, clients, tokens))
    return results
