"""`fragment-llm serve RUN`: a run's model behind an OpenAI-compatible HTTP API (FastAPI and uvicorn,
the `serve` extra); with --bench, its tokens per second under 1, 8, ... streaming clients."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..console import error_console
from ..errors import UserError
from ..text import plural
from .common import add_run_arguments, in_range, load_model

API_KEY_VARIABLE = "FRAGMENT_LLM_API_KEY"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="serve a run's model over an OpenAI-compatible HTTP API")
    add_run_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=in_range(0, 65535), default=8000, help="0 takes any free one (default: 8000)")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_VARIABLE),
        help=f"refuse requests without `Authorization: Bearer KEY` (default: ${API_KEY_VARIABLE}, else none)",
    )
    parser.add_argument("--model-name", help="the model's name in the API (default: the run directory's name)")
    parser.add_argument(
        "--parallel", type=in_range(1, 256), default=8, help="requests answered at once; more wait (default: 8)"
    )
    parser.add_argument(
        "--bench",
        type=client_counts,
        metavar="N,N,...",
        help="measure tokens/s with N clients streaming at once, for each N (e.g. 1,8), then end",
    )
    parser.add_argument(
        "--bench-tokens", type=in_range(1), help="tokens each --bench answer asks for (default: half the context)"
    )
    parser.set_defaults(handler=handle)


def client_counts(text: str) -> list[int]:
    try:
        return [in_range(1, 256)(part) for part in text.split(",")]
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error}: give client counts such as 1,8") from None


def handle(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("`fragment-llm serve` needs FastAPI and uvicorn: pip install 'fragment-llm[serve]'") from None
    from ..serve.api import Served

    trained = load_model(args)
    name = args.model_name or Path(args.run).resolve().name
    served = Served(name, trained.tokenizer, trained.config.block_size, str(args.run))
    if not served.chats:
        error_console.print(
            f"warning: {args.run} has no chat tokens (its tokenizer predates them): /v1/chat/completions refuses "
            "requests until it is fine-tuned with data=chat; /v1/completions continues text",
            markup=False,
            soft_wrap=True,
        )
    if args.bench:
        from ..serve.bench import bench

        arguments = [args.run, "--model-name", name, *(["--checkpoint", args.checkpoint] if args.checkpoint else [])]
        for result in bench(arguments, served, args.bench, args.bench_tokens):
            print(
                f"{plural(result['clients'], 'client')} streaming at once: {result['tokens']} tokens in "
                f"{result['wall_s']} s, {result['tokens_per_s']} tokens/s in all, {result['tokens_per_s_per_client']} "
                f"per client; first token after {result['first_token_s']} s (median)",
                flush=True,
            )
        return 0
    from ..serve.server import serve

    serve(trained, served, args.host, args.port, args.api_key, args.parallel)
    return 0
