"""`fragment-llm eval` (commands/evaluate.py): with --stride both figures side by side, and a bad stride,
data that is not text or running out of memory each one `error:` line and a non-zero exit."""

from __future__ import annotations

import pytest
import torch
from helpers import BLOCK, assert_one_error_line, call

from fragment_llm.commands.main import main
from fragment_llm.config.schema import DataConfig, DataSource
from fragment_llm.data.corpus import collect_documents, split_documents
from fragment_llm.model.evaluate import evaluate_documents


@pytest.fixture(scope="module")
def val_documents(trained):
    data = trained.settings["data"]
    settings = DataConfig(source=DataSource(data["source"]), path=data["path"], val_fraction=data["val_fraction"])
    return split_documents(collect_documents(settings), settings.val_fraction)[1]


def figures(out: str) -> dict[str, list[str]]:
    """`Label: first | second` lines -> {label: [first, second]}."""
    rows = {}
    for line in out.splitlines():
        label, colon, rest = line.partition(":")
        if colon and "|" in rest:
            rows[label] = [part.strip() for part in rest.split("|")]
    return rows


def test_eval_with_a_stride_prints_both_figures_side_by_side(trained_run, trained, val_documents, capsys):
    assert main(["eval", str(trained_run), "--stride", "32"]) == 0
    out = capsys.readouterr().out
    flat = evaluate_documents(trained.model, trained.tokenizer, val_documents)
    sliding = evaluate_documents(trained.model, trained.tokenizer, val_documents, stride=32)
    rows = figures(out)
    assert rows["Windows"] == ["non-overlapping", "sliding, stride 32"]
    assert rows["Loss"] == [f"{flat.loss:.4f}", f"{sliding.loss:.4f} nats per token"]
    assert rows["Perplexity"] == [f"{flat.perplexity:.2f}", f"{sliding.perplexity:.2f}"]
    assert rows["Bits per byte"] == [f"{flat.bits_per_byte:.4f}", f"{sliding.bits_per_byte:.4f}"]
    assert f"{flat.tokens:,} tokens" in out

    assert main(["eval", str(trained_run)]) == 0  # without a stride: one figure each, as before
    out = capsys.readouterr().out
    assert f"Loss: {flat.loss:.4f} nats per token\n" in out and "|" not in out


@pytest.mark.parametrize(
    "stride,code,needle",
    [
        ("0", 2, "argument --stride: 0 is out of range; pass a value at least 1"),
        ("x", 2, "argument --stride: x is not an integer"),
        (  # a usage error, like a stride below 1
            str(BLOCK + 1),
            2,
            f"--stride {BLOCK + 1} is longer than the model's context (block_size {BLOCK}); "
            f"pass a stride in [1, {BLOCK}]",
        ),
    ],
)
def test_a_bad_stride_is_one_error_line_and_a_non_zero_exit(stride, code, needle, trained_run, capsys):
    try:
        returned = main(["eval", str(trained_run), "--stride", stride])
    except SystemExit as exit:  # argparse's errors exit from inside parse_args
        returned = exit.code
    assert returned == code
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert needle in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("contents", [b"\xff\xfe\x00\x01" * 50, b"", None], ids=["binary", "empty", "no text files"])
def test_eval_on_data_that_is_not_text_is_one_error_line(contents, trained_run, tmp_path, capsys):
    data = tmp_path / "data.txt"
    if contents is None:
        data.mkdir()
    else:
        data.write_bytes(contents)
    code, _, err = call(["eval", trained_run, "--data", data], capsys)
    assert_one_error_line(code, err, data.name)


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        torch.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"),
    ],
)
def test_out_of_memory_is_one_error_line(error, trained_run, monkeypatch, capsys):
    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr("fragment_llm.model.evaluate.evaluate_documents", exhausted)
    code, _, err = call(["eval", trained_run, "--data", trained_run / "train.log"], capsys)
    assert_one_error_line(code, err, "out of memory")


def test_other_runtime_errors_are_not_taken_for_out_of_memory(trained_run, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("fragment_llm.model.evaluate.evaluate_documents", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["eval", str(trained_run), "--data", str(trained_run / "train.log")])
