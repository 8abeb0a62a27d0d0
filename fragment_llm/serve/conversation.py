"""A conversation that fits the model's context: `fragment-llm chat` keeps its history here, cut from
the oldest turn when it grows too long. The format is data/chat.py's, the one fine-tuning taught."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenizers import Tokenizer

from ..data.chat import chat_ids, has_chat_tokens
from ..errors import UserError

FINE_TUNE = "python run.py data=chat data.path=conversations.jsonl train.init_from={run}"


class ContextError(UserError):
    """A message, or the system prompt, that does not fit the model's context."""


def check_chat_tokens(tokenizer: Tokenizer, run: object) -> None:
    """A run trained before the chat tokens were reserved has no way to mark a turn: it cannot chat."""
    if not has_chat_tokens(tokenizer):
        raise UserError(
            f"{run} has no chat tokens (its tokenizer predates them), so it cannot chat; fine-tune it on "
            f"conversations first: {FINE_TUNE.format(run=run)}"
        )


def prompt_limit(block_size: int, max_new_tokens: int) -> int:
    """The tokens a conversation may take: the context less room for the answer (at most half of it;
    a longer answer slides the window on, as `generate` does)."""
    return block_size - min(max_new_tokens, block_size // 2)


def conversation_ids(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The conversation's ids, ending with the prompt for the assistant's answer."""
    return chat_ids(tokenizer, messages, generation_prompt=True)[0]


def fit(tokenizer: Tokenizer, messages: list[dict[str, str]], limit: int) -> tuple[list[dict[str, str]], int]:
    """`messages` with the oldest turns dropped until the conversation takes at most `limit` tokens, and
    how many messages were dropped. A leading system message and the last message always stay; a turn
    goes whole (a user's message and what followed it), so what is kept starts with a user's message."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    if system and len(conversation_ids(tokenizer, system)) > limit:
        size = len(conversation_ids(tokenizer, system))
        raise ContextError(
            f"the system prompt alone takes {size} tokens, and the conversation may take {limit} "
            "(the model's context less room for an answer); shorten it"
        )
    history = messages[len(system) :]
    if len(conversation_ids(tokenizer, system + history[-1:])) > limit:
        size = len(conversation_ids(tokenizer, system + history[-1:]))
        raise ContextError(
            f"the message takes {size} tokens{' with the system prompt' if system else ''}, and the conversation "
            f"may take {limit} (the model's context less room for an answer); shorten it"
        )
    dropped = 0
    while len(conversation_ids(tokenizer, system + history)) > limit:
        cut = 1
        while cut < len(history) - 1 and history[cut]["role"] != "user":
            cut += 1
        history, dropped = history[cut:], dropped + cut
    return system + history, dropped


@dataclass
class Conversation:
    """The chat's history: the system prompt, if any, then the turns so far."""

    tokenizer: Tokenizer
    limit: int
    system: str | None = None
    turns: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.system:
            fit(self.tokenizer, self.start(), self.limit)  # a system prompt too long for any chat: said at once

    def start(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, text: str) -> tuple[list[int], int]:
        """The ids that ask the model to answer `text` after the turns so far (the oldest dropped to fit),
        and how many messages were dropped. A message too long is not added: ContextError."""
        messages, dropped = fit(
            self.tokenizer, [*self.start(), *self.turns, {"role": "user", "content": text}], self.limit
        )
        self.turns = messages[len(self.start()) :]
        return conversation_ids(self.tokenizer, messages), dropped

    def answered(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def reset(self) -> None:
        self.turns = []
