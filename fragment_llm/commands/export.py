"""`fragment-llm export RUN --out DIR`: a run's model as a Hugging Face folder (GPT-2, Llama or Qwen3
where the layout is one of them, else with our model code) or as safetensors with our config."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..console import console
from ..files import file_problem
from ..runs.records import holds_run
from .common import CLIError, add_run_arguments, fail, load_model


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="write a run's model as a Hugging Face folder or safetensors")
    add_run_arguments(parser)
    parser.add_argument(
        "--format",
        choices=("hf", "safetensors"),
        default="hf",
        help="hf (default): a transformers folder, as GPT-2, Llama or Qwen3 where the layout is "
        "one of them, else with our model code (trust_remote_code=True); "
        "safetensors: weights + our config",
    )
    parser.add_argument("--out", metavar="DIR", required=True, help="folder to write (not a run directory)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a folder that is not empty: its export is replaced whole, its other files stay",
    )
    parser.set_defaults(handler=handle)


def check_export_folder(out: Path, force: bool) -> None:
    """An export never writes into a run directory, and replaces files only with --force."""
    from ..export.folder import holds_files
    from ..export.hf import EXPORTED_FILES

    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file; pass a folder (it is created if missing)")
    target = out.resolve()
    for folder in (target, *target.parents):
        if holds_run(folder):
            where = "a run directory" if folder == target else f"inside the run directory {folder}"
            raise CLIError(
                f"--out {out} is {where}, which holds only what training wrote; "
                "pick a folder outside it, e.g. --out exported/"
            )
    if out.is_dir() and holds_files(out, EXPORTED_FILES) and not force:
        raise CLIError(
            f"--out {out} is not empty; pass --force to replace the exported files in it, or pick another folder"
        )


def handle(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from ..export.hf import export_hf, export_safetensors

    out = Path(args.out)
    check_export_folder(out, args.force)
    trained = load_model(args)
    model = trained.model.cpu()
    try:
        if args.format == "hf":
            written = export_hf(model, trained.tokenizer, trained.tokenizer_path, out, replace=args.force)
        else:
            export_safetensors(model, trained.tokenizer_path, out, replace=args.force)
            written = "safetensors (our GPTConfig in config.json)"
    except OSError as error:
        return fail(f"could not export to {file_problem(error, out)}")
    except SafetensorError as error:  # safetensors' own I/O errors
        return fail(f"could not export to {out}: {error}; check that it is writable and the disk has space")
    console.print(f"Exported {trained.checkpoint_path} to {out} as {written}", markup=False, soft_wrap=True)
    return 0
