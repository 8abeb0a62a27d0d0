"""The engine: one worker thread owns the model and answers requests in turn, token by token.

Up to `parallel` requests are answered at once: each step, every one of them gets its next token
(with a key/value cache each: a step costs one position per request), so every stream moves on
while the others do; later requests wait in order for a place. The `n` choices of one request are
one batch (they share the prompt, so one cache of `n` rows holds them). A request whose client went
away is dropped at its next turn, freeing its place.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..model.generate import SamplingError, TextStream, generate_rows
from ..train.from_run import TrainedModel
from .api import Request

log = logging.getLogger(__name__)

# What a job tells its request, in order: ("text", choice, text), ("end", choice, finish_reason), then
# ("done", completion_tokens) or ("error", message).
Event = tuple


class StopText:
    """Text in, text out up to the first of `stops`: text that may be the start of one waits for what
    follows, so a stop string split over tokens is still found and never shown."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.held = ""

    def push(self, piece: str) -> tuple[str, bool]:
        """The text that is sure to come before any stop string, and whether one was found."""
        text = self.held + piece
        found = [text.find(stop) for stop in self.stops if stop in text]
        if found:
            self.held = ""
            return text[: min(found)], True
        keep = max(
            (size for stop in self.stops for size in range(1, len(stop)) if text.endswith(stop[:size])), default=0
        )
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


@dataclass
class Job:
    """A request on its way through the engine: `deliver` hands each event to whoever waits for it
    (from the worker thread: it must be thread-safe); `cancel` drops it."""

    request: Request
    deliver: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class Generation:
    """A job's choices as they are generated: its batch of rows, each row's text and stop strings."""

    def __init__(self, job: Job, trained: TrainedModel):
        request = job.request
        seed = secrets.randbits(63) if request.seed is None else request.seed
        self.job = job
        self.steps = generate_rows(
            trained.model,
            request.prompt,
            request.n,
            request.max_tokens,
            request.sampling,
            torch.Generator().manual_seed(seed),
            stop_ids=request.stop_ids,
        )
        self.texts = [TextStream(trained.tokenizer) for _ in range(request.n)]
        self.stops = [StopText(request.stops) for _ in range(request.n)]
        self.ended = [False] * request.n
        self.tokens = 0

    def advance(self) -> bool:
        """One more token for each choice still going; False once every choice has ended."""
        try:
            step = next(self.steps)
        except StopIteration:
            for choice in range(len(self.ended)):
                self.end(choice, "length")
            return False
        for choice, token in enumerate(step):
            if self.ended[choice]:
                continue
            if token is None:
                self.end(choice, "stop")
                continue
            self.tokens += 1
            text, stopped = self.stops[choice].push(self.texts[choice].push(token))
            if text:
                self.job.deliver(("text", choice, text))
            if stopped:
                self.end(choice, "stop")
        return not all(self.ended)

    def end(self, choice: int, reason: str) -> None:
        if self.ended[choice]:
            return
        held = self.stops[choice].flush()  # text that could have begun a stop string, which never came
        if held:
            self.job.deliver(("text", choice, held))
        self.ended[choice] = True
        self.job.deliver(("end", choice, reason))

    def close(self) -> None:
        self.steps.close()


class Engine:
    """The worker thread that owns the model (see the module's docstring)."""

    def __init__(self, trained: TrainedModel, parallel: int):
        self.trained = trained
        self.parallel = parallel
        self.waiting: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self.work, name="fragment-llm engine", daemon=True)

    def start(self) -> Engine:
        self.thread.start()
        return self

    def submit(self, job: Job) -> None:
        self.waiting.put(job)

    def stop(self) -> None:
        self.waiting.put(None)
        self.thread.join()

    def work(self) -> None:
        active: list[Generation] = []
        while True:
            while len(active) < self.parallel:
                try:
                    job = self.waiting.get(block=not active)
                except queue.Empty:
                    break
                if job is None:
                    return
                if not job.cancelled.is_set():
                    active += self.begin(job)
            for generation in list(active):
                if generation.job.cancelled.is_set() or not self.advance(generation):
                    generation.close()
                    active.remove(generation)

    def begin(self, job: Job) -> list[Generation]:
        try:
            return [Generation(job, self.trained)]
        except Exception as error:  # noqa: BLE001 - the server keeps serving: the request gets the error
            self.fail(job, error)
            return []

    def advance(self, generation: Generation) -> bool:
        try:
            going = generation.advance()
        except Exception as error:  # noqa: BLE001
            self.fail(generation.job, error)
            return False
        if not going:
            generation.job.deliver(("done", generation.tokens))
        return going

    def fail(self, job: Job, error: Exception) -> None:
        if not isinstance(error, SamplingError):
            log.exception("a request failed")
        job.deliver(("error", str(error)))
