"""`fragment-llm`: tools over past runs (no Hydra app, so browsing creates no run directories)."""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from rich.table import Table
from rich.text import Text

from ..config.schema import ConfigError, DataConfig, DataSource
from ..console import console, error_console
from ..errors import UserError
from ..files import file_problem
from ..runs.plot import X_AXES, PlotError, run_curve, write_curves
from ..runs.records import (
    METRIC_NAMES,
    describe_run,
    failed_to_start,
    find_runs,
    holds_run,
    lookup,
    read_summary,
    record_damage,
    reproduce_command,
    run_config,
    run_overrides,
)
from ..runs.stats import comparable, deciding_metric, group_runs, groups_view, names_key, override_key, verdict
from ..runs.tables import (
    FORMATS,
    column_key,
    is_number,
    print_view,
    runs_csv,
    runs_json,
    runs_markdown,
    runs_view,
    stdout_console,
)

if TYPE_CHECKING:
    import torch

    from ..train.from_run import TrainedModel

# torch and the model's code load only for the commands that run a model (generate, eval, export,
# bench): `runs`, `show`, `compare` and `plot` start in a fraction of a second.

METRICS = (
    "status",
    "steps",
    "epochs",
    "tokens",
    "params",
    "initial_val_loss",
    "train_loss",
    "val_loss",
    "best_val_loss",
    "val_bpb",
    "best_val_bpb",
    "tokens_per_sec",
    "wall_time_s",
    "error",
)


class CLIError(UserError):
    """A user mistake in what to look at: printed as one `error: ...` line, exit code 2."""


class Parser(argparse.ArgumentParser):
    """Bad arguments end as one `error: ...` line, like every other bad input, not usage + error."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see `{self.prog} --help`")
        sys.exit(2)


def fail(message: str) -> int:
    error_console.print(f"error: {message}", markup=False, soft_wrap=True)
    return 1


def end_on_closed_pipe() -> int:
    """The reader of our output went away (`fragment-llm generate RUN | head -3`): end quietly, as the
    Python docs' note on SIGPIPE recommends and as rich's console does for our tables: standard output
    now points at /dev/null, so that Python's last flush does not fail again, and the exit code is 1."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def existing_folder(path: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise CLIError(f"{folder} is not a directory; pass the folder that holds your runs")
    return folder


def resolve_run(name: str, root: Path) -> Path:
    """A run given as its directory, or as the end of its path under `root` (`07-10-11_tiny-cpu_4fd8`, `4fd8/0`)."""
    path = Path(name)
    if holds_run(path):
        return path
    if root.is_dir():
        matches = [run for run in find_runs(root) if str(run.relative_to(root)).endswith(name.strip("/"))]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise CLIError(f"{name} matches {len(matches)} runs under {root}; give more of its path")
    raise CLIError(f"{name} is not a run directory and matches no run under {root}")


def parse_filter(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise CLIError(f"--filter {text} is not key=value; e.g. --filter status=completed or model.n_embd=64")
    return key, value


def same_value(actual: Any, wanted: str) -> bool:
    """Whether a run's value is the one a filter asks for: equal as numbers, or as text ignoring case."""
    if is_number(actual):
        try:
            return float(actual) == float(wanted)
        except (ValueError, OverflowError):  # not a number; an integer beyond floats
            return False
    return str(actual).lower() == wanted.lower()


def sort_key(key: str):
    def value_of(run: dict[str, Any]):
        _, value = lookup(run, key)
        number = is_number(value)
        return (value is None, 0 if number else 1, value if number else str(value))

    return value_of


def chosen_columns(text: str, runs: list[dict[str, Any]]) -> list[str]:
    """`--columns a,b,c` as keys of the runs' rows, each one that some run has."""
    columns = [column_key(name) for name in text.split(",") if name.strip()]
    if not columns:
        raise CLIError(f"--columns {text!r} names no column; e.g. --columns run,overrides,bits/byte")
    for key in columns:
        if runs and not any(lookup(run, key)[0] for run in runs):
            raise CLIError(
                f"--columns: no run has a column {key}; use a column of the table (run, overrides, "
                "best val loss, ...), a summary.json field (best_val_bpb) or a config key (optimizer.lr)"
            )
    return columns


def command_runs(args: argparse.Namespace) -> int:
    root = existing_folder(args.dir)
    runs = [describe_run(run, root) for run in find_runs(root)]
    hidden = 0 if args.all else sum(map(failed_to_start, runs))
    if not args.all:
        runs = [run for run in runs if not failed_to_start(run)]
    for key, value in map(parse_filter, args.filter):
        found = [(run, *lookup(run, key)) for run in runs]
        if runs and not any(has for _, has, _ in found):
            raise CLIError(
                f"no run has a key {key}; use a column (status, model, ...), a summary.json field "
                "or a config key (model.n_embd)"
            )
        runs = [run for run, has, actual in found if has and same_value(actual, value)]
    if args.sort:
        if runs and not any(lookup(run, args.sort)[0] for run in runs):
            raise CLIError(f"no run has a key {args.sort} to sort by")
        runs.sort(key=sort_key(args.sort), reverse=args.reverse)
    if args.limit is not None:
        runs = runs[: args.limit]
    columns = chosen_columns(args.columns, runs) if args.columns is not None else None
    output_format = "json" if args.json else args.format
    if output_format in ("csv", "json"):
        if hidden:  # on standard error: standard output holds only the data
            error_console.print(f"note: {hidden} more failed before training: --all lists them", markup=False)
        sys.stdout.write(runs_json(runs, columns) + "\n" if output_format == "json" else runs_csv(runs, columns))
        return 0
    hidden_note = f"; {hidden} more failed before training: --all lists them" if hidden else ""
    if output_format == "markdown":
        sys.stdout.write(runs_markdown(runs_view(runs, "Runs in", root, columns, hidden_note=hidden_note)))
    else:
        out = stdout_console()
        print_view(runs_view(runs, "Runs in", root, columns, hidden_note=hidden_note, width=out.width), out)
    return 0


def key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in rows.items():
        table.add_row(key, "-" if value is None else str(value))
    return table


def warn_if_damaged(run: Path) -> None:
    damage = record_damage(run)
    if damage:
        error_console.print(
            f"warning: {run} is damaged, so some of it is missing above: {damage}", markup=False, soft_wrap=True
        )


def command_show(args: argparse.Namespace) -> int:
    run = resolve_run(args.run, Path(args.root))
    summary = read_summary(run)
    console.print(f"[bold]{run}[/bold]")
    console.print(key_value_table("Config", run_config(run)))
    console.print("Overrides: " + (" ".join(run_overrides(run)) or "(none: the defaults)"), markup=False)
    console.print(key_value_table("Metrics (summary.json)", {key: summary[key] for key in METRICS if key in summary}))
    files = sorted([*(run / "checkpoints").glob("*.pt"), *(run / "models").glob("*.pt")])
    console.print("Checkpoints:" if files else "Checkpoints: none", markup=False)
    for path in files:
        console.print(f"  {path}  ({path.stat().st_size / 1e6:.1f} MB)", markup=False)
    console.print(f"Reproduce: {reproduce_command(run)}", markup=False, soft_wrap=True)
    warn_if_damaged(run)
    return 0


def resolve_runs(name: str, root: Path) -> list[Path]:
    """A run (as `resolve_run` finds it), or every run in a folder of runs (a sweep's)."""
    path = Path(name)
    if path.is_dir() and not holds_run(path) and find_runs(path):
        return find_runs(path)
    return [resolve_run(name, root)]


def compare_groups(runs: list[Path], root: Path, ignored: list[str]) -> int:
    """`compare --ignore KEYS`: the runs pooled into groups that differ only in KEYS, each group's
    mean and spread, and the best group against each other one."""
    rows = [describe_run(run, root) for run in runs]
    keys = sorted({override_key(item) for row in rows for item in row["overrides"]})
    for name in ignored:
        if not any(names_key(name, key) for key in keys):
            raise CLIError(f"--ignore {name}: no run's overrides set it; they set {', '.join(keys) or 'nothing'}")
    pooled = [row for row in rows if comparable(row)]
    if not pooled:
        raise CLIError("none of these runs completed with a validation loss; there is nothing to pool")
    groups = group_runs(pooled, ignored)
    metric = deciding_metric(groups)
    groups.sort(key=lambda group: group.spread(metric).mean)
    out = stdout_console()
    print_view(groups_view(groups, ignored, left_out=len(rows) - len(pooled)), out)
    for other in groups[1:]:
        out.print(Text(verdict(groups[0], other, metric)))
    return 0


def command_compare(args: argparse.Namespace) -> int:
    root = Path(args.root)
    runs = list(dict.fromkeys(run for name in args.runs for run in resolve_runs(name, root)))
    if len(runs) < 2:
        raise CLIError("compare needs at least two runs")
    if args.ignore is not None:
        return compare_groups(runs, root, [name.strip() for name in args.ignore.split(",") if name.strip()])
    configs = [run_config(run) for run in runs]
    summaries = [read_summary(run) for run in runs]
    keys = sorted(set().union(*configs))
    differing = [key for key in keys if len({json.dumps(config.get(key), default=str) for config in configs}) > 1]
    names = [str(run.relative_to(root)) if run.is_relative_to(root) else str(run) for run in runs]

    config_table = Table(title=f"Config keys that differ ({len(differing)} of {len(keys)})")
    metrics_table = Table(title="Metrics")
    for table in (config_table, metrics_table):
        table.add_column("key")
        for name in names:
            table.add_column(name, overflow="fold")
    for key in differing:
        config_table.add_row(key, *("-" if config.get(key) is None else str(config.get(key)) for config in configs))
    for key in METRICS:
        if any(key in summary for summary in summaries):
            metrics_table.add_row(key, *(str(summary.get(key, "-")) for summary in summaries))
    console.print(config_table)
    console.print(metrics_table)
    for run in runs:
        warn_if_damaged(run)
    return 0


def _load(args: argparse.Namespace) -> TrainedModel:
    from ..train.from_run import load_run
    from ..train.hardware import resolve_device

    return load_run(Path(args.run), args.checkpoint and Path(args.checkpoint), resolve_device("auto"))


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
    """The prompt `read` returns, checked to be text: bytes that are not UTF-8 arrive as a
    UnicodeDecodeError, or as surrogates (from the command line, or standard input in the C locale)."""
    try:
        prompt = read()
        prompt.encode()
    except UnicodeError:
        raise CLIError(f"{source} is not UTF-8 text; give the prompt as text") from None
    return prompt


def command_generate(args: argparse.Namespace) -> int:
    import torch

    trained = _load(args)
    generator = torch.Generator().manual_seed(secrets.randbits(63) if args.seed is None else args.seed)
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


def command_eval(args: argparse.Namespace) -> int:
    from ..data.corpus import collect_documents, split_documents, text_documents
    from ..model.evaluate import document_tokens, evaluate_documents, evaluate_tokens

    trained = _load(args)
    block_size = trained.model.config.block_size
    if args.stride is not None and args.stride > block_size:
        return fail(
            f"--stride {args.stride} is longer than the model's context (block_size {block_size}); "
            f"pass a stride in [1, {block_size}], e.g. --stride {max(1, block_size // 2)}"
        )
    if args.data is not None:
        documents, described = text_documents(args.data, key="--data"), args.data
    else:
        data = trained.settings.get("data")
        try:
            source = DataSource(data["source"])
        except (TypeError, KeyError, ValueError):
            return fail(f"{trained.checkpoint_path} does not record its training data; pass --data PATH")
        data_settings = DataConfig(source=source, path=data.get("path"), val_fraction=data.get("val_fraction"))
        try:
            documents = split_documents(collect_documents(data_settings), data_settings.val_fraction)[1]
        except ConfigError as error:
            return fail(f"{error} (the run's training data); or evaluate other text with --data PATH")
        described = (
            f"the run's validation split "
            f"({data_settings.source.value}{f': {data_settings.path}' if data_settings.path else ''})"
        )
    if args.stride is None:
        result = evaluate_documents(trained.model, trained.tokenizer, documents)
    else:
        tokens, text_bytes = document_tokens(trained.tokenizer, documents), sum(doc.size for doc in documents)
        result, sliding = (evaluate_tokens(trained.model, tokens, text_bytes, stride) for stride in (None, args.stride))
    console.print(f"Model: {trained.checkpoint_path}", markup=False, soft_wrap=True)
    console.print(
        f"Data: {described}, {result.tokens:,} tokens, {result.text_bytes:,} bytes", markup=False, soft_wrap=True
    )
    if args.stride is None:
        console.print(f"Loss: {result.loss:.4f} nats per token", markup=False)
        console.print(f"Perplexity: {result.perplexity:.2f}", markup=False)
        console.print(f"Bits per byte: {result.bits_per_byte:.4f}", markup=False)
        return 0
    # The two measures side by side: the sliding window's gain is what more context is worth.
    rows = [
        ("Windows:", "non-overlapping", f"sliding, stride {args.stride}", ""),
        ("Loss:", f"{result.loss:.4f}", f"{sliding.loss:.4f}", " nats per token"),
        ("Perplexity:", f"{result.perplexity:.2f}", f"{sliding.perplexity:.2f}", ""),
        ("Bits per byte:", f"{result.bits_per_byte:.4f}", f"{sliding.bits_per_byte:.4f}", ""),
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    for label, flat, slid, unit in rows:
        console.print(f"{label:<{widths[0]}} {flat:<{widths[1]}} | {slid}{unit}", markup=False, soft_wrap=True)
    return 0


def check_export_folder(out: Path, force: bool) -> None:
    """An export never writes into a run directory, and replaces files only with --force."""
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
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CLIError(
            f"--out {out} is not empty; pass --force to replace the exported files in it, or pick another folder"
        )


def command_export(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from ..export.hf import export_hf, export_safetensors

    out = Path(args.out)
    check_export_folder(out, args.force)
    trained = _load(args)
    model = trained.model.cpu()
    try:
        if args.format == "hf":
            written = export_hf(model, trained.tokenizer, trained.tokenizer_path, out)
        else:
            export_safetensors(model, trained.tokenizer_path, out)
            written = "safetensors (our GPTConfig in config.json)"
    except OSError as error:
        return fail(f"could not export to {file_problem(error, out)}")
    except SafetensorError as error:  # safetensors' own I/O errors
        return fail(f"could not export to {out}: {error}; check that it is writable and the disk has space")
    console.print(f"Exported {trained.checkpoint_path} to {out} as {written}", markup=False, soft_wrap=True)
    return 0


def _in_range(low: float, high: float = math.inf, kind: type = int):
    """An argparse type: a number in [low, high] (NaN is in no range)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text} is not a{'n integer' if kind is int else ' number'}") from None
        if not low <= value <= high:
            limit = f"at least {low}" if high == math.inf else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"{text} is out of range; pass a value {limit}")
        return value

    return parse


def _probability(text: str) -> float:
    value = _in_range(0.0, 1.0, float)(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"{text} is out of range (0, 1]; 1 turns top-p off")
    return value


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run directory (its models/final_model.pt and tokenizer.json)")
    parser.add_argument("--checkpoint", metavar="PATH", help="another checkpoint of the run instead of its final model")


def command_bench(args: argparse.Namespace) -> int:
    from ..launch.compose import compose_settings
    from ..train.bench import run_bench

    settings = compose_settings(args.overrides)
    error_console.print(
        f"Benchmarking {' '.join(args.overrides) or 'the defaults'} ({args.steps} timed rounds)...",
        markup=False,
        soft_wrap=True,
    )
    result = run_bench(settings, args.steps)
    train, generate, tokenizer = result["train"], result["generate"], result["tokenizer"]
    setup = result["config"]
    table = Table(
        title=f"fragment-llm bench: {setup['model']}, batch {setup['batch']}, {setup['device']}, "
        f"{setup['precision']}, {setup['threads']} threads{', compiled' if setup['compile'] else ''}"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("training tokens/s (median)", f"{train['tokens_per_sec']:,.0f}"),
        ("timed", f"{train['rounds']} rounds x {train['steps_per_round']} steps"),
        ("bare loop tokens/s (median)", f"{train['bare_tokens_per_sec']:,.0f}"),
        ("toolkit / bare loop", f"{train['overhead_ratio']:.3f}"),
        ("model FLOPs per token", f"{train['flops_per_token']:,.0f}"),
        ("measured matmul peak", f"{train['peak_flops'] / 1e9:,.1f} GFLOP/s"),
        ("MFU", f"{train['mfu']:.1%}"),
        ("attention kernel (SDPA)", setup["attention"]),
        ("process start to first step done", f"{result['startup_seconds']:.2f} s"),
        ("tokenizer training", f"{tokenizer['train_mb_per_sec']:.2f} MB/s"),
        ("tokenizer encoding", f"{tokenizer['encode_mb_per_sec']:.2f} MB/s"),
        (
            f"generation, KV cache ({generate['new_tokens']} tokens)",
            f"{generate['cached_tokens_per_sec']:,.0f} tokens/s",
        ),
        ("generation, no cache", f"{generate['uncached_tokens_per_sec']:,.0f} tokens/s"),
        ("peak resident memory", f"{result['peak_rss_mb']:,.0f} MB"),
    ]
    if result["cpu_bf16_speedup"] is not None:
        speedup = result["cpu_bf16_speedup"]
        verdict = "hardware.amp=true uses bf16" if speedup >= 1 else "no native bf16: hardware.amp=true stays fp32"
        rows.insert(6, ("CPU bf16 matmul vs fp32", f"{speedup:.3g}x ({verdict})"))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if args.json:
        from ..files import write_json

        write_json(Path(args.json), result)
        console.print(f"JSON: {args.json}", markup=False)
    return 0


def command_plot(args: argparse.Namespace) -> int:
    curves = []
    for name in args.runs:
        try:
            curves.append(run_curve(resolve_run(name, Path(args.root)), name, args.metric, args.x))
        except PlotError as error:
            error_console.print(f"warning: {error}; skipped", markup=False, soft_wrap=True)
    if not curves:
        raise CLIError(f"none of the runs has {args.metric} values to draw")
    write_curves(curves, args.metric, args.x, Path(args.out))
    runs = f"{len(curves)} run{'s' if len(curves) > 1 else ''}"
    console.print(f"Curves: {args.out} ({args.metric} against {args.x}, {runs})", markup=False, soft_wrap=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fragment-llm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    runs = commands.add_parser("runs", help="list the runs under outputs/ (or DIR)")
    runs.add_argument("dir", nargs="?", default="outputs", help="folder holding run directories (default: outputs)")
    runs.add_argument("--sort", metavar="KEY", help="sort by a column, summary field or config key (default: when)")
    runs.add_argument("--reverse", action="store_true", help="sort in descending order")
    runs.add_argument(
        "--filter",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="keep runs whose KEY (status, model, model.n_embd, ...) equals VALUE; repeatable",
    )
    runs.add_argument("--limit", metavar="N", type=_in_range(0), help="show the first N runs (after sorting)")
    runs.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (default: fitted to the terminal, or to COLUMNS or 100 columns in a pipe), csv or json "
        "(every field, full values, for scripts) or markdown (for notes)",
    )
    runs.add_argument("--json", action="store_true", help="the same as --format json")
    runs.add_argument(
        "--columns",
        metavar="A,B,C",
        help="show these columns: the table's (when, run, model, hardware, optimizer, overrides, steps, "
        "tokens, best val loss, bits/byte, status, time), summary.json fields or config keys (optimizer.lr)",
    )
    runs.add_argument(
        "--all", action="store_true", help="also list the single runs that failed before training (a bad setting)"
    )
    runs.set_defaults(handler=command_runs)

    show = commands.add_parser("show", help="one run: config, overrides, metrics, checkpoints, the command")
    show.add_argument("run", help="a run directory, or the end of its path under --root")
    show.add_argument("--root", default="outputs", help="where to look for runs given by name (default: outputs)")
    show.set_defaults(handler=command_show)

    compare = commands.add_parser(
        "compare",
        help="the config keys that differ between runs, and their metrics; or, with --ignore, groups of "
        "repeated runs and whether they differ by more than their spread",
    )
    compare.add_argument(
        "runs", nargs="+", help="two or more run directories (or ends of their paths), or folders of runs (a sweep)"
    )
    compare.add_argument(
        "--ignore",
        metavar="KEYS",
        help="pool the runs that differ only in these override keys (comma-separated; the last part of a "
        "key is enough: seed for train.seed), and show each group's mean, standard deviation and count of "
        "best val loss and bits per byte, and whether the best group's lead over each other group is "
        "larger than their spread (Welch's t-test, p < 0.05)",
    )
    compare.add_argument("--root", default="outputs", help="where to look for runs given by name (default: outputs)")
    compare.set_defaults(handler=command_compare)

    generate = commands.add_parser("generate", help="write text with a run's model")
    _add_run_arguments(generate)
    generate.add_argument("--prompt", help="text to continue (default: read from standard input)")
    generate.add_argument("--interactive", action="store_true", help="keep asking for prompts until Ctrl-D")
    generate.add_argument("--max-new-tokens", type=_in_range(1), default=200, help="tokens to add (default: 200)")
    generate.add_argument(
        "--temperature", type=_in_range(0.0, 100.0, float), default=0.8, help="0 is greedy (default: 0.8)"
    )
    generate.add_argument(
        "--top-k", type=_in_range(0), default=50, help="sample among the k likeliest; 0 is off (default: 50)"
    )
    generate.add_argument(
        "--top-p", type=_probability, default=1.0, help="nucleus sampling mass; 1 is off (default: 1)"
    )
    generate.add_argument("--num-samples", type=_in_range(1), default=1, help="samples per prompt (default: 1)")
    generate.add_argument("--seed", type=_in_range(0, 2**63 - 1), help="same seed, same text (default: random)")
    generate.set_defaults(handler=command_generate)

    evaluate = commands.add_parser("eval", help="loss, perplexity and bits per byte of a run's model on text")
    _add_run_arguments(evaluate)
    evaluate.add_argument(
        "--data", metavar="PATH", help="a text file, folder of .txt files or glob (default: the run's validation split)"
    )
    evaluate.add_argument(
        "--stride",
        metavar="N",
        type=_in_range(1),
        help="also score in sliding windows that start every N tokens (N <= the model's "
        "block_size), each token with at least block_size - N tokens of context; "
        "block_size / N times the work",
    )
    evaluate.set_defaults(handler=command_eval)

    export = commands.add_parser("export", help="write a run's model as a Hugging Face folder or safetensors")
    _add_run_arguments(export)
    export.add_argument(
        "--format",
        choices=("hf", "safetensors"),
        default="hf",
        help="hf (default): a transformers folder, as GPT-2, Llama or Qwen3 where the layout is "
        "one of them, else with our model code (trust_remote_code=True); "
        "safetensors: weights + our config",
    )
    export.add_argument("--out", metavar="DIR", required=True, help="folder to write (not a run directory)")
    export.add_argument(
        "--force", action="store_true", help="write into a folder that is not empty, replacing the exported files in it"
    )
    export.set_defaults(handler=command_export)

    bench = commands.add_parser("bench", help="measure training, tokenizer and generation speed for a config")
    bench.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="training overrides, as for run.py (e.g. model=small hardware=cpu)",
    )
    bench.add_argument(
        "--steps",
        type=_in_range(1, 10_000),
        default=10,
        help="timed rounds, each a block of optimizer steps (about 0.5 s) of the trainer and then "
        "of the bare loop (default: 10)",
    )
    bench.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    bench.set_defaults(handler=command_bench)

    plot = commands.add_parser("plot", help="draw runs' curves (from their metrics.jsonl) on one chart, as an image")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run directories (or ends of their paths under --root)")
    plot.add_argument("--metric", choices=METRIC_NAMES, default="val/bpb", help="what to draw (default: val/bpb)")
    plot.add_argument("--x", choices=tuple(X_AXES), default="step", help="against what (default: step)")
    plot.add_argument(
        "--out",
        metavar="PATH",
        default="curves.png",
        help="the image to write: .png, .svg, .pdf, ... (default: curves.png)",
    )
    plot.add_argument("--root", default="outputs", help="where to look for runs given by name (default: outputs)")
    plot.set_defaults(handler=command_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
        return code
    except CLIError as error:
        fail(str(error))
        return 2
    except UserError as error:
        return fail(str(error))
    except BrokenPipeError:
        return end_on_closed_pipe()
    except OSError as error:
        return fail(file_problem(error))
    except (RuntimeError, MemoryError) as error:
        from ..train.hardware import is_out_of_memory

        if not is_out_of_memory(error):
            raise
        return fail(
            "out of memory: the model and what it works on do not fit; close other programs, "
            "evaluate less text (--data), or use a machine with more memory"
        )
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
