"""`fragment-llm export RUN --out DIR`: a run's model as a Hugging Face folder (GPT-2, Llama or Qwen3
where the layout is one of them, else with our model code), as safetensors with our config, or
(`--format gguf --out FILE`) as one GGUF file for llama.cpp where it has an architecture for the layout."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..console import console
from ..files import file_problem
from ..runs.records import holds_run
from .common import CLIError, add_run_arguments, fail, load_model

if TYPE_CHECKING:
    from ..train.from_run import TrainedModel


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="write a run's model as a Hugging Face folder, safetensors or GGUF")
    add_run_arguments(parser)
    parser.add_argument(
        "--format",
        choices=("hf", "safetensors", "gguf"),
        default="hf",
        help="hf (default): a transformers folder, as GPT-2, Llama or Qwen3 where the layout is "
        "one of them, else with our model code (trust_remote_code=True), with the chat template; "
        "safetensors: weights + our config; gguf: one file for llama.cpp, with the tokenizer and the "
        "chat template (GPT-2's, Llama's and Qwen3's layouts: arch=gpt2, arch=llama)",
    )
    parser.add_argument(
        "--out", metavar="DIR", required=True, help="folder to write (not a run directory); a file for gguf"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a folder that is not empty: its export is replaced whole, its other files stay; "
        "for gguf, replace the file",
    )
    parser.set_defaults(handler=handle)


def check_outside_runs(out: Path) -> None:
    """An export never writes into a run directory, which holds only what training wrote."""
    target = out.resolve()
    for folder in (target, *target.parents):
        if holds_run(folder):
            where = "a run directory" if folder == target else f"inside the run directory {folder}"
            raise CLIError(
                f"--out {out} is {where}, which holds only what training wrote; "
                "pick a folder outside it, e.g. --out exported/"
            )


def check_export_folder(out: Path, force: bool) -> None:
    """An export never writes into a run directory, and replaces files only with --force."""
    from ..export.folder import holds_files
    from ..export.hf import EXPORTED_FILES

    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; pass a folder (it is created if missing)")
    check_outside_runs(out)
    if out.is_dir() and holds_files(out, EXPORTED_FILES) and not force:
        raise CLIError(
            f"--out {out} is not empty; pass --force to replace the exported files in it, or pick another folder"
        )


def check_export_file(out: Path, force: bool) -> None:
    """A GGUF export is one file: never a folder's name, never in a run, an existing file only with --force."""
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; --format gguf writes one file, e.g. --out {out / 'model.gguf'}")
    check_outside_runs(out)
    if out.exists() and not force:
        raise CLIError(f"--out {out} exists; pass --force to replace it, or pick another name")


def export_gguf_file(trained: TrainedModel, out: Path, name: str) -> str:
    """The run's model as one GGUF file named `name` inside; what it was written as."""
    try:
        from ..export.gguf import export_gguf
    except ModuleNotFoundError as error:
        if error.name != "gguf":
            raise
        raise CLIError("export --format gguf needs the gguf package; pip install 'fragment-llm[gguf]'") from None
    architecture = export_gguf(trained.model.cpu(), trained.tokenizer, out, name)
    return f"GGUF (llama.cpp's {architecture} architecture)"


def handle(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from ..export.hf import export_hf, export_safetensors

    out = Path(args.out)
    if args.format == "gguf":
        check_export_file(out, args.force)
    else:
        check_export_folder(out, args.force)
    trained = load_model(args)
    model = trained.model.cpu()
    try:
        if args.format == "hf":
            written = export_hf(model, trained.tokenizer, trained.tokenizer_path, out, replace=args.force)
        elif args.format == "gguf":
            written = export_gguf_file(trained, out, Path(args.run).resolve().name)
        else:
            export_safetensors(model, trained.tokenizer_path, out, replace=args.force)
            written = "safetensors (our GPTConfig in config.json)"
    except OSError as error:
        return fail(f"could not export to {file_problem(error, out)}")
    except SafetensorError as error:  # safetensors' own I/O errors
        return fail(f"could not export to {out}: {error}; check that it is writable and the disk has space")
    console.print(f"Exported {trained.checkpoint_path} to {out} as {written}", markup=False, soft_wrap=True)
    return 0
