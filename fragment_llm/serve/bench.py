"""`fragment-llm serve RUN --bench 1,8`: tokens per second through the real server, with 1, 8, ...
clients streaming at once: the server runs in a thread of this process, each client in its own
thread, over HTTP as any client talks to it."""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..train.from_run import TrainedModel
from .api import Served
from .server import serving_in_thread

PROMPT = "Tell me about lists."


@dataclass
class Stream:
    """One client's streamed answer: its tokens, and when its first text and its end came."""

    tokens: int = 0
    first_s: float = 0.0
    end_s: float = 0.0


def stream_once(base: str, served: Served, max_tokens: int, seed: int, started: float) -> Stream:
    """One streamed request, read to `data: [DONE]`; its tokens are the usage the server counted."""
    address = urlsplit(base)
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
        if not stream.first_s and chunk["choices"]:
            stream.first_s = time.perf_counter() - started
        if chunk.get("usage"):
            stream.tokens = chunk["usage"]["completion_tokens"]
    stream.end_s = time.perf_counter() - started
    connection.close()
    return stream


def clients_at_once(base: str, served: Served, clients: int, max_tokens: int) -> dict:
    started, streams = time.perf_counter(), [Stream()] * clients

    def client(number: int) -> None:
        streams[number] = stream_once(base, served, max_tokens, number, started)

    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = max(stream.end_s for stream in streams)
    tokens = sum(stream.tokens for stream in streams)
    return {
        "clients": clients,
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "tokens_per_s_per_client": round(statistics.mean(stream.tokens / stream.end_s for stream in streams), 1),
        "first_token_s": round(statistics.median(stream.first_s for stream in streams), 3),
    }


def bench(trained: TrainedModel, served: Served, counts: list[int], max_tokens: int | None) -> list[dict]:
    """For each count, that many clients each streaming an answer of up to `max_tokens` tokens (None: what
    the context leaves); answers that end sooner count what they made."""
    tokens = max_tokens or served.block_size // 2  # the other half holds the prompt
    results = []
    with serving_in_thread(trained, served, parallel=max(counts)) as base:
        stream_once(base, served, 8, 0, time.perf_counter())  # warm up: the first forward passes are slow
        for clients in counts:
            results.append(clients_at_once(base, served, clients, tokens))
    return results
