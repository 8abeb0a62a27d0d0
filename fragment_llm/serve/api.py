"""The OpenAI API's requests and errors: a request's JSON body checked into a `Request` the engine
runs, and every mistake an `APIError` in the shape OpenAI's clients read (`{"error": {"message",
"type", "param", "code"}}`), with the messages and codes OpenAI gives for the same mistakes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer

from ..data.chat import ROLES, chat_ids, has_chat_tokens, stop_ids
from ..data.tokenizer import end_of_text_id
from ..model.generate import Sampling, prompt_ids
from .conversation import FINE_TUNE

# "developer" is what OpenAI's newer models call the system prompt; clients send either.
ROLE_NAMES = {**{role: role for role in ROLES}, "developer": "system"}
MAX_CHOICES = 128  # OpenAI's limit on `n`
MAX_STOPS = 4  # and on `stop`
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


class APIError(Exception):
    """A request refused: its HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str = ""):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Served:
    """What the server answers for: the model's name, its tokenizer and its context."""

    name: str
    tokenizer: Tokenizer
    block_size: int
    run: str = ""

    @property
    def chats(self) -> bool:
        return has_chat_tokens(self.tokenizer)


@dataclass
class Request:
    """A completion to run: the prompt's ids and how to sample `n` choices of up to `max_tokens` each."""

    chat: bool
    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    n: int = 1
    seed: int | None = None
    stop_ids: set[int] = field(default_factory=set)
    stops: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise APIError(
            400,
            f"We could not parse the JSON body of your request ({error}). The OpenAI API expects a JSON payload; "
            "send the request with Content-Type: application/json and a JSON object as its body.",
        ) from None
    if not isinstance(body, dict):
        raise APIError(400, f"Invalid type for body: expected an object, but got {type_name(body)} instead.")
    return body


def type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string", list: "an array"}
    return "null" if value is None else names.get(type(value), "an object")


def integer(body: dict[str, Any], name: str, low: int, high: float = math.inf) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise APIError(
            400,
            f"Invalid type for '{name}': expected an integer, but got {type_name(value)} instead.",
            name,
            "invalid_type",
        )
    if value < low:
        raise APIError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    if value > high:
        raise APIError(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead.",
            name,
            "integer_above_max_value",
        )
    return value


def decimal(body: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise APIError(
            400,
            f"Invalid type for '{name}': expected a number, but got {type_name(value)} instead.",
            name,
            "invalid_type",
        )
    if not low <= value <= high:  # NaN is in no range
        below = value < low
        raise APIError(
            400,
            f"Invalid '{name}': decimal {'below minimum' if below else 'above maximum'} value. Expected a value in "
            f"[{low}, {high}], but got {value} instead.",
            name,
            "decimal_below_min_value" if below else "decimal_above_max_value",
        )
    return float(value)


def missing(name: str) -> APIError:
    return APIError(400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter")


def check_model(body: dict[str, Any], served: Served) -> None:
    model = body.get("model")
    if model is None:
        raise missing("model")
    if model != served.name:
        raise APIError(
            404,
            f"The model `{model}` does not exist or you do not have access to it. This server serves `{served.name}` "
            "(GET /v1/models lists it).",
            "model",
            "model_not_found",
        )


def message_text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (`[{"type": "text", "text": ...}]`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in content):
        if all(isinstance(part.get("text"), str) for part in content):
            return "".join(part["text"] for part in content)
    raise APIError(
        400,
        f"Invalid value for '{where}': expected a string or an array of text parts; this model reads text only.",
        where,
        "invalid_value",
    )


def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if messages is None:
        raise missing("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "Invalid 'messages': expected a non-empty array of messages.", "messages", "invalid_value")
    checked = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise APIError(
                400, f"Invalid type for '{where}': expected an object, but got {type_name(message)} instead.", where
            )
        role = message.get("role")
        if role not in ROLE_NAMES:
            supported = ", ".join(f"'{name}'" for name in ROLE_NAMES)
            raise APIError(
                400,
                f"Invalid value: {json.dumps(role)}. Supported values are: {supported}.",
                f"{where}.role",
                "invalid_value",
            )
        if message.get("content") is None:
            raise missing(f"{where}.content")
        checked.append({"role": ROLE_NAMES[role], "content": message_text(message["content"], f"{where}.content")})
    return checked


def stop_texts(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or not all(isinstance(text, str) for text in stops) or len(stops) > MAX_STOPS:
        raise APIError(
            400,
            f"Invalid 'stop': expected a string or an array of at most {MAX_STOPS} strings.",
            "stop",
            "invalid_value",
        )
    return [text for text in stops if text]


def fit_max_tokens(body: dict[str, Any], served: Served, prompt: int, default: int | None, what: str) -> int:
    """`max_tokens` (or `max_completion_tokens`), which with the prompt must fit the context, as at OpenAI;
    `default` None is what the context leaves."""
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    asked = integer(body, name, 1)
    limit = served.block_size
    if asked is None and prompt >= limit:
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, your {what} resulted in {prompt} "
            f"tokens. Please reduce the length of the {what}.",
            "messages" if what == "messages" else "prompt",
            "context_length_exceeded",
        )
    wanted = asked if asked is not None else min(default or limit, limit - prompt)
    if prompt + wanted > limit:
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested {prompt + wanted} tokens "
            f"({prompt} in the {what}, {wanted} in the completion). Please reduce the length of the {what} or "
            "completion.",
            name if prompt < limit else ("messages" if what == "messages" else "prompt"),
            "context_length_exceeded",
        )
    return wanted


def sampling_of(body: dict[str, Any]) -> Sampling:
    """OpenAI's temperature (default 1) and top_p; top_k, which OpenAI has not, as vLLM takes it (0 is off)."""
    temperature = decimal(body, "temperature", 0.0, 2.0, 1.0)
    top_p = decimal(body, "top_p", 0.0, 1.0, 1.0)
    top_k = integer(body, "top_k", 0) or 0
    return Sampling(temperature=0.0 if top_p == 0 else temperature, top_k=top_k, top_p=top_p or 1.0)


def common(body: dict[str, Any], chat: bool, prompt: list[int], max_tokens: int) -> Request:
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise APIError(400, f"Invalid type for 'stream': expected a boolean, but got {type_name(stream)} instead.")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "Invalid type for 'stream_options': expected an object.", "stream_options", "invalid_type")
    return Request(
        chat=chat,
        prompt=prompt,
        max_tokens=max_tokens,
        sampling=sampling_of(body),
        n=integer(body, "n", 1, MAX_CHOICES) or 1,
        seed=integer(body, "seed", *SEED_RANGE),
        stops=stop_texts(body),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
    )


def chat_request(body: dict[str, Any], served: Served) -> Request:
    """A `/v1/chat/completions` body: the conversation in data/chat.py's format, ending with the prompt
    for the assistant's answer, which ends at `<|end|>`."""
    check_model(body, served)
    messages = chat_messages(body)
    if not served.chats:
        raise APIError(
            400,
            f"The model `{served.name}` has no chat tokens (its tokenizer predates them), so it cannot chat; use "
            f"/v1/completions, or fine-tune it on conversations: {FINE_TUNE.format(run=served.run or served.name)}",
            "model",
            "model_not_chat",
        )
    prompt = chat_ids(served.tokenizer, messages, generation_prompt=True)[0]
    request = common(body, True, prompt, fit_max_tokens(body, served, len(prompt), None, "messages"))
    request.stop_ids = stop_ids(served.tokenizer)
    return request


def completion_request(body: dict[str, Any], served: Served) -> Request:
    """A `/v1/completions` body: text to continue, which ends at `<|endoftext|>` (16 tokens by default,
    as at OpenAI)."""
    check_model(body, served)
    prompt = body.get("prompt")
    if prompt is None:
        raise missing("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise APIError(400, "Invalid 'prompt': expected a string; one prompt per request.", "prompt", "invalid_value")
    ids = prompt_ids(served.tokenizer, prompt)
    request = common(body, False, ids, fit_max_tokens(body, served, len(ids), 16, "prompt"))
    request.stop_ids = {end_of_text_id(served.tokenizer)}
    return request
