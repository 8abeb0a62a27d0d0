"""`fragment-llm chat RUN`: a conversation with a run's chat model (one fine-tuned with data=chat) in
the terminal, each answer streamed as it is written; from a pipe, one conversation's answer."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ..console import error_console
from .common import CLIError, add_run_arguments, add_sampling_arguments, load_model, sampling_generator
from .generate import read_prompt

if TYPE_CHECKING:
    import torch

    from ..serve.conversation import Conversation
    from ..train.from_run import TrainedModel

HELP = "Type a message and press Enter: /reset starts over, /quit or Ctrl-D ends, Ctrl-C stops an answer"
COMMANDS = ("/reset", "/quit", "/exit", "/help")
MESSAGE_SHAPE = '{"role": "user", "content": "..."}'


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("chat", help="talk with a run's chat model")
    add_run_arguments(parser)
    parser.add_argument("--system", help="a system prompt, kept for the whole conversation (default: none)")
    add_sampling_arguments(parser)
    parser.set_defaults(handler=handle)


def note(text: str) -> None:
    error_console.print(text, markup=False, soft_wrap=True, style="dim")


def handle(args: argparse.Namespace) -> int:
    from ..serve.conversation import Conversation, check_chat_tokens, prompt_limit

    trained = load_model(args)
    check_chat_tokens(trained.tokenizer, args.run)
    system = None if args.system is None else read_prompt(lambda: args.system, "--system")
    conversation = Conversation(trained.tokenizer, prompt_limit(trained.config.block_size, args.max_new_tokens), system)
    generator = sampling_generator(args)
    if sys.stdin.isatty():
        return converse(trained, conversation, args, generator)
    text = read_prompt(sys.stdin.read, "standard input")
    ids = piped_ids(conversation, text)
    write_answer(trained, ids, args, generator)
    return 0


def piped_ids(conversation: Conversation, text: str) -> list[int]:
    """The ids of the conversation on standard input: JSON Lines of messages when its first line is one
    (`{"role": ..., "content": ...}`), else the whole text as the user's one message."""
    from ..serve.conversation import conversation_ids, fit

    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise CLIError(f"standard input is empty; pipe a message, or one JSON message per line ({MESSAGE_SHAPE})")
    if not is_message(lines[0][1]):
        return conversation.ask(text.removesuffix("\n"))[0]
    messages = [message_on(number, line) for number, line in lines]
    if conversation.system is not None and messages[0]["role"] == "system":
        raise CLIError("the conversation on standard input has a system prompt, and so has --system; give one")
    messages, dropped = fit(conversation.tokenizer, [*conversation.start(), *messages], conversation.limit)
    if dropped:
        note(f"({dropped} of the oldest messages dropped to fit the context)")
    return conversation_ids(conversation.tokenizer, messages)


def is_message(line: str) -> bool:
    try:
        return isinstance(message := json.loads(line), dict) and "role" in message
    except json.JSONDecodeError:
        return False


def message_on(number: int, line: str) -> dict[str, str]:
    from ..data.chat import ROLES

    try:
        message = json.loads(line)
    except json.JSONDecodeError as error:
        raise CLIError(
            f"standard input line {number} is not JSON ({error.msg}); give one message per line: {MESSAGE_SHAPE}"
        )
    if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
        raise CLIError(
            f"standard input line {number} is not a message: give {MESSAGE_SHAPE}, the role one of {', '.join(ROLES)}"
        )
    return {"role": message["role"], "content": message["content"]}


def write_answer(trained: TrainedModel, ids: list[int], args: argparse.Namespace, generator: torch.Generator) -> str:
    """The answer to `ids`, written as it is made, up to the end of the turn; Ctrl-C stops it there (in
    a terminal). Its text, as far as it came."""
    from ..data.chat import stop_ids
    from ..model.generate import Sampling, TextStream, generate_tokens

    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    stream, pieces = TextStream(trained.tokenizer), []
    tokens = generate_tokens(
        trained.model, ids, args.max_new_tokens, sampling, generator, stop_ids=stop_ids(trained.tokenizer)
    )
    try:
        for token in tokens:
            pieces.append(stream.push(token))
            sys.stdout.write(pieces[-1])
            sys.stdout.flush()
    except KeyboardInterrupt:
        if not sys.stdin.isatty():
            raise
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces)


def converse(trained: TrainedModel, conversation: Conversation, args: argparse.Namespace, generator) -> int:
    """Messages typed in the terminal, each answered in turn, until /quit or Ctrl-D. Ctrl-C stops an
    answer, or clears the line being typed."""
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    note(HELP)
    while True:
        try:
            line = read_prompt(lambda: input("> "), "standard input").strip()
            if line in ("/quit", "/exit"):
                return 0
            if line:
                turn(trained, conversation, line, args, generator)
        except EOFError:
            sys.stdout.write("\n")
            return 0
        except KeyboardInterrupt:
            sys.stdout.write("\n")


def turn(trained: TrainedModel, conversation: Conversation, line: str, args: argparse.Namespace, generator) -> None:
    """One line typed: a command, or a message and its answer."""
    from ..serve.conversation import ContextError

    if line == "/reset":
        conversation.reset()
        note("(a new conversation)")
        return
    if line == "/help" or (line.startswith("/") and " " not in line):
        note(HELP if line == "/help" else f"{line} is no command: {', '.join(COMMANDS)}")
        return
    try:
        ids, dropped = conversation.ask(line)
    except ContextError as error:
        note(f"error: {error}")
        return
    if dropped:
        note(f"({dropped} of the oldest messages dropped to fit the context)")
    conversation.answered(write_answer(trained, ids, args, generator))
