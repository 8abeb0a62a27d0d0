"""The HTTP side of `fragment-llm serve`: a FastAPI app with OpenAI's routes (`/v1/chat/completions`,
`/v1/completions`, `/v1/models`), their responses and server-sent events as OpenAI sends them, the
API key, and OpenAI's error shape for every refusal; uvicorn runs it."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..text import plural
from .api import APIError, Request, Served, chat_request, completion_request, parse_body
from .engine import Engine, Job

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def say(line: str) -> None:
    """One line about the server on standard error (where uvicorn writes too)."""
    print(line, file=sys.stderr, flush=True)


def create_app(engine: Engine, served: Served, api_key: str | None = None) -> FastAPI:
    def authorize(request: HTTPRequest) -> None:
        given = request.headers.get("authorization", "")
        if api_key is not None and not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            message = (
                "Incorrect API key provided."
                if given
                else "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            raise APIError(401, message, code="invalid_api_key")

    app = FastAPI(
        title="fragment-llm", docs_url=None, redoc_url=None, openapi_url=None, dependencies=[Depends(authorize)]
    )
    created = int(time.time())

    @app.exception_handler(APIError)
    async def refused(request: HTTPRequest, error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(HTTPException)
    async def not_routed(request: HTTPRequest, error: HTTPException) -> JSONResponse:
        message = f"Unknown request URL: {request.method} {request.url.path}. Please check the URL for typos."
        if error.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}."
        return JSONResponse(APIError(error.status_code, message, code="unknown_url").body(), error.status_code)

    def model_card() -> dict[str, Any]:
        return {"id": served.name, "object": "model", "created": created, "owned_by": "fragment-llm"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        if name != served.name:
            raise APIError(404, f"The model `{name}` does not exist.", "model", "model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        return await answer(request, chat_request(parse_body(await request.body()), served))

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        return await answer(request, completion_request(parse_body(await request.body()), served))

    async def answer(http: HTTPRequest, request: Request):
        reply = Reply(request, served.name, http.url.path)
        if request.stream:  # submitted once the stream starts: a client gone before then costs nothing
            return StreamingResponse(reply.stream(engine), media_type="text/event-stream", headers=STREAM_HEADERS)
        return await reply.whole(http, *submit(engine, request))

    return app


def submit(engine: Engine, request: Request) -> tuple[Job, asyncio.Queue]:
    """The job for `request`, in the engine's queue, and the queue its events arrive in."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def deliver(event: tuple) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the server is shutting down: no one waits any more
            job.cancel()

    job = Job(request, deliver)
    engine.submit(job)
    return job, events


class Reply:
    """One request's answer, as OpenAI's objects: whole, or in chunks as server-sent events."""

    def __init__(self, request: Request, model: str, path: str):
        self.request, self.model, self.path = request, model, path
        self.id = ("chatcmpl-" if request.chat else "cmpl-") + secrets.token_hex(12)
        self.object = "chat.completion" if request.chat else "text_completion"
        self.created = int(time.time())
        self.started = time.perf_counter()

    def envelope(self, object_name: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model, "choices": choices}

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt = len(self.request.prompt)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens,
        }

    def piece(self, choice: int, text: str | None, finish_reason: str | None, role: bool = False) -> dict[str, Any]:
        """One chunk's choice: a chat delta (`{}` when it only ends), or a completion's text."""
        if not self.request.chat:
            return {"index": choice, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
        return {"index": choice, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        object_name = "chat.completion.chunk" if self.request.chat else "text_completion"
        return f"data: {json.dumps({**self.envelope(object_name, choices), **extra})}\n\n"

    async def stream(self, engine: Engine) -> AsyncIterator[str]:
        """The answer as OpenAI streams it: `data: {chunk}` events, then `data: [DONE]`. A client that
        goes away cancels this (Starlette does), and with it the job."""
        job, events = submit(engine, self.request)
        done = False
        try:
            if self.request.chat:  # OpenAI's first chunk of each choice says who speaks
                yield self.chunk([self.piece(choice, "", None, role=True) for choice in range(self.request.n)])
            while True:
                event = await events.get()
                if event[0] == "text":
                    yield self.chunk([self.piece(event[1], event[2], None)])
                elif event[0] == "end":
                    yield self.chunk([self.piece(event[1], None, event[2])])
                elif event[0] == "error":
                    yield f"data: {json.dumps(APIError(500, event[1]).body())}\n\n"
                    done = True
                    return
                else:
                    if self.request.include_usage:
                        yield self.chunk([], usage=self.usage(event[1]))
                    yield "data: [DONE]\n\n"
                    done = True
                    self.log(plural(event[1], "token"))
                    return
        finally:
            if not done:
                job.cancel()
                self.log("the client went away; stopped")

    async def whole(self, http: HTTPRequest, job: Job, events: asyncio.Queue) -> JSONResponse | None:
        """The whole answer in one object, once every choice has ended. While it is made, whether the
        client is still there is checked four times a second: one that went away cancels the job."""

        async def watch() -> None:
            while not await http.is_disconnected():
                await asyncio.sleep(0.25)
            events.put_nowait(("gone",))

        watcher = asyncio.create_task(watch())
        texts, reasons = [[] for _ in range(self.request.n)], [None] * self.request.n
        try:
            while True:
                event = await events.get()
                if event[0] == "text":
                    texts[event[1]].append(event[2])
                elif event[0] == "end":
                    reasons[event[1]] = event[2]
                elif event[0] == "error":
                    raise APIError(500, event[1])
                elif event[0] == "gone":
                    self.log("the client went away; stopped")
                    return None
                else:
                    self.log(plural(event[1], "token"))
                    return JSONResponse(self.body(texts, reasons, event[1]))
        finally:
            watcher.cancel()
            job.cancel()  # done, failed or gone: nothing more to make (a no-op once it ended)

    def body(self, texts: list[list[str]], reasons: list[str | None], tokens: int) -> dict[str, Any]:
        choices = []
        for choice, (text, reason) in enumerate(zip(texts, reasons)):
            if self.request.chat:
                message = {"role": "assistant", "content": "".join(text), "refusal": None}
                choices.append({"index": choice, "message": message, "logprobs": None, "finish_reason": reason})
            else:
                choices.append(self.piece(choice, "".join(text), reason))
        return {**self.envelope(self.object, choices), "usage": self.usage(tokens)}

    def log(self, outcome: str) -> None:
        mode, seconds = "streamed" if self.request.stream else "whole", time.perf_counter() - self.started
        say(f"{self.path} {self.id}: {outcome} ({mode}, n={self.request.n}) in {seconds:.2f} s")
