"""`fragment-llm generate RUN`: text from a run's model, from a prompt given, read from standard input,
or asked for again and again (--interactive)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Callable

from ..console import command_line_text, error_console
from .common import CLIError, add_run_arguments, add_sampling_arguments, in_range, load_model, sampling_generator

if TYPE_CHECKING:
    import torch

    from ..train.from_run import TrainedModel


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("generate", help="write text with a run's model")
    add_run_arguments(parser)
    parser.add_argument("--prompt", help="text to continue (default: read from standard input)")
    parser.add_argument("--interactive", action="store_true", help="keep asking for prompts until Ctrl-D")
    add_sampling_arguments(parser)
    parser.add_argument("--num-samples", type=in_range(1), default=1, help="samples per prompt (default: 1)")
    parser.set_defaults(handler=handle)


def write_samples(trained: TrainedModel, prompt: str, args: argparse.Namespace, generator: torch.Generator) -> None:
    """Each sample: the prompt, then its continuation as it is produced."""
    from ..model.generate import Sampling, generate_text

    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    for number in range(1, args.num_samples + 1):
        if args.num_samples > 1:
            sys.stdout.write(f"--- sample {number}/{args.num_samples} ---\n")
        sys.stdout.write(prompt)
        for piece in generate_text(trained.model, trained.tokenizer, prompt, args.max_new_tokens, sampling, generator):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()


def read_prompt(read: Callable[[], str], source: str) -> str:
    """The prompt `read` returns, as text: bytes that are not UTF-8 arrive as a UnicodeDecodeError,
    UTF-8 bytes that the locale could not decode (the C locale) as surrogates, read back as UTF-8."""
    try:
        prompt = command_line_text(read())
    except UnicodeError:
        raise CLIError(f"{source} is not UTF-8 text; give the prompt as text") from None
    return prompt


def handle(args: argparse.Namespace) -> int:
    trained = load_model(args)
    generator = sampling_generator(args)
    if not args.interactive:
        if args.prompt is not None:
            prompt = read_prompt(lambda: args.prompt, "--prompt")
        else:
            if sys.stdin.isatty():
                error_console.print("Reading the prompt from standard input; end it with Ctrl-D", soft_wrap=True)
            # Without the newline that ends the input (`echo "..." | fragment-llm generate RUN`).
            prompt = read_prompt(lambda: sys.stdin.read().removesuffix("\n"), "standard input")
        write_samples(trained, prompt, args, generator)
        return 0
    error_console.print("Type a prompt and press Enter; Ctrl-D ends", soft_wrap=True)
    while True:
        try:
            prompt = read_prompt(lambda: input("> "), "standard input")
        except EOFError:
            return 0
        write_samples(trained, prompt, args, generator)
