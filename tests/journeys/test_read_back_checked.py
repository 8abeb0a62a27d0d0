"""What is read back is checked (issue 27, cause 5). A FIFO, a folder, a file too large or nested too deep
where one of a run's files belongs is one line naming it, never a hang or a traceback; every JSON written
is strict JSON; a run whose process died is not shown `running`; eval names a split the run's validation
split only while its corpus is the one the run trained on; and `<|endoftext|>` in text stays text."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import RUN, assert_one_error_line, call, copy_run, prepare, run_in_process, tiny_overrides, train_tiny_run

from fragment_llm.data.tokenizer import END_OF_TEXT
from fragment_llm.files import NESTING_LIMIT, write_json
from fragment_llm.runs.claim import RunLock
from fragment_llm.runs.records import DIED, read_metrics


@pytest.fixture(autouse=True)
def no_hang():
    """A reader that opens a FIFO blocks until a writer comes: here it fails the test after a minute."""

    def expire(signum, frame):
        raise TimeoutError("blocked for a minute: a FIFO was opened")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def strict_json(text: str):
    """JSON as a strict parser reads it: NaN and Infinity are not JSON."""
    return json.loads(text, parse_constant=lambda constant: pytest.fail(f"{constant} is not JSON"))


def replace_with(path: Path, kind: str) -> None:
    """`path` (a file) replaced by a FIFO or a folder of the same name."""
    path.unlink(missing_ok=True)
    os.mkfifo(path) if kind == "FIFO" else path.mkdir()


def runs_json(folder: Path, capsys) -> list[dict]:
    code, out, err = call(["runs", folder, "--all", "--json"], capsys)
    assert code == 0, err
    return strict_json(out)


# ---- not a regular file where one belongs ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["FIFO", "folder"])
@pytest.mark.parametrize("record", ["summary.json", ".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml"])
def test_a_fifo_or_folder_where_a_record_belongs_shows_the_run_damaged(trained_run, tmp_path, capsys, record, kind):
    run = copy_run(trained_run, tmp_path)
    replace_with(run / record, kind)
    (row,) = runs_json(tmp_path, capsys)
    assert row["status"] == "damaged" and f"{record}: a {kind}, not a file" in row["damaged"]
    code, out, err = call(["show", run], capsys)
    assert code == 0 and "Traceback" not in err
    assert err.startswith("warning: ") and f"{record}: a {kind}, not a file" in err


@pytest.mark.parametrize("target,reason", [("summary.json", "Too many levels of symbolic"), ("gone", "No such file")])
def test_a_broken_link_where_summary_json_belongs_is_damage_not_absence(trained_run, tmp_path, capsys, target, reason):
    run = copy_run(trained_run, tmp_path)
    (run / "summary.json").unlink()
    (run / "summary.json").symlink_to(target)  # itself: a loop
    code, _, err = call(["show", run], capsys)
    assert code == 0 and err.startswith("warning: ") and f"summary.json: {reason}" in err


@pytest.mark.parametrize("kind", ["FIFO", "folder"])
def test_a_fifo_or_folder_as_the_run_tokenizer_is_one_error_line(trained_run, tmp_path, capsys, kind):
    run = copy_run(trained_run, tmp_path)
    replace_with(run / "tokenizer.json", kind)
    for command in (["generate", run, "--prompt", "The", "--max-new-tokens", "3"], ["eval", run]):
        code, _, err = call(command, capsys)
        assert_one_error_line(code, err, run / "tokenizer.json", f"a {kind}, not a file")


def test_a_fifo_as_metrics_jsonl_is_one_error_line_for_plot(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    replace_with(run / "metrics.jsonl", "FIFO")
    code, _, err = call(["plot", run, "--out", tmp_path / "curves.png"], capsys)
    assert_one_error_line(code, err, run / "metrics.jsonl", "a FIFO, not a file", "remove it")
    assert not (tmp_path / "curves.png").exists()


def test_a_resume_refuses_a_fifo_metrics_jsonl_at_once(finished_run, tmp_path, corpus):
    """Reading metrics.jsonl back on resume blocked forever on a FIFO (and ignored the first SIGTERM)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run[1], run)
    replace_with(run / "metrics.jsonl", "FIFO")
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 8})
    started = time.monotonic()
    result = run_in_process([RUN, *overrides, f"train.resume={run}", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode != 0 and time.monotonic() - started < 50
    errors = [line for line in result.stderr.splitlines() if "metrics.jsonl" in line]
    assert errors and "a FIFO, not a file" in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert (run / "metrics.jsonl").is_fifo()  # refused, not replaced


@pytest.mark.parametrize("entry", ["meta.json", "tokenizer"])
def test_a_fifo_in_the_token_cache_is_a_damaged_entry_built_again(corpus, tmp_path, entry, caplog):
    first = prepare(corpus, tmp_path / "cache")
    (path,) = (tmp_path / "cache").glob("tokens/*/meta.json" if entry == "meta.json" else "tokenizers/*.json")
    replace_with(path, "FIFO")
    again = prepare(corpus, tmp_path / "cache")
    assert path.is_file() and "a FIFO, not a file" in caplog.text
    assert np.array_equal(first.train, again.train) and first.tokenizer_hash == again.tokenizer_hash


# ---- too large, nested too deep -----------------------------------------------------------------------
def nested(depth: int) -> dict:
    value = {"a": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


DEEP_DICT = json.dumps(nested(NESTING_LIMIT + 1))
# Nine lines of YAML that expand to 10^9 values: walking them (to check, to flatten a config) takes hours.
BILLION_LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 10)}]\n" for level in range(1, 9)
)


@pytest.mark.parametrize(
    "record,content,needle",
    [
        ("summary.json", None, "more than such a file holds"),  # 200 MB (sparse)
        ("summary.json", "[" * 200_000, "nested deeper than such a file is"),
        ("summary.json", DEEP_DICT, "nested deeper than such a file is"),
        (".hydra/config.yaml", "model: " + "[" * 5_000, "nested deeper than such a file is"),
        (".hydra/config.yaml", "model: " + "{a: " * 100 + "1" + "}" * 100, "nested deeper than such a file is"),
        (".hydra/overrides.yaml", "- " + "[" * 50_000, "nested deeper than such a file is"),
        (".hydra/config.yaml", BILLION_LAUGHS, "more than 1,000,000 values once its aliases are expanded"),
        (".hydra/hydra.yaml", "hydra: &loop [*loop]\n", "nested deeper than such a file is"),
    ],
    ids=["200MB", "brackets", "dict", "yaml-brackets", "yaml-flow", "overrides", "billion-laughs", "self-alias"],
)
def test_a_record_too_large_or_nested_too_deep_is_damaged(trained_run, tmp_path, capsys, record, content, needle):
    run = copy_run(trained_run, tmp_path)
    if content is None:
        with open(run / record, "r+b") as handle:
            handle.truncate(200 << 20)
    else:
        (run / record).write_text(content)
    started = time.monotonic()
    (row,) = runs_json(tmp_path, capsys)
    assert row["status"] == "damaged" and needle in row["damaged"] and record in row["damaged"]
    code, _, err = call(["show", run], capsys)
    assert code == 0 and needle in err and "Traceback" not in err
    assert time.monotonic() - started < 20


def test_metrics_lines_that_are_not_rows_are_left_out(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    rows = read_metrics(run)
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write("[" * 100_000 + "\n")  # recursed without limit
        metrics.write('{"step": 90, "train/loss": ' + "1" * 200_000 + "}\n")  # a line no row is
        metrics.write('{"step": 91, "train/loss": "low"}\n')  # a value that is no number
        metrics.write('{"step": 92, "train/loss": {"nested": 1}}\n')
        metrics.write('{"step": 93, "train/loss": NaN, "val/loss": 2.5}\n')  # as earlier versions wrote
        metrics.write('{"step": true}\n{"step": 94')  # cut short
    assert read_metrics(run) == [*rows, {"step": 93, "train/loss": None, "val/loss": 2.5}]
    code, _, err = call(["plot", run, "--metric", "val/loss", "--out", tmp_path / "curves.png"], capsys)
    assert code == 0 and (tmp_path / "curves.png").is_file(), err


def test_a_metrics_jsonl_too_large_is_one_error_line(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    with open(run / "metrics.jsonl", "r+b") as handle:
        handle.truncate(3 << 30)  # sparse: no disk used
    code, _, err = call(["plot", run, "--out", tmp_path / "curves.png"], capsys)
    assert_one_error_line(code, err, run / "metrics.jsonl", "more than such a file holds")


# ---- strict JSON written --------------------------------------------------------------------------------
def test_write_json_writes_nan_and_infinity_as_null(tmp_path):
    write_json(tmp_path / "x.json", {"loss": float("nan"), "runs": [float("inf"), 1.5, {"x": -float("inf")}]})
    assert strict_json((tmp_path / "x.json").read_text()) == {"loss": None, "runs": [None, 1.5, {"x": None}]}


def test_a_resume_with_nothing_left_to_train_writes_strict_json(finished_run, tmp_path, corpus, capsys):
    run = tmp_path / "finished"
    shutil.copytree(finished_run[1], run)
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 6})  # the run's own length: nothing left
    result = run_in_process([RUN, *overrides, f"train.resume={run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (summary_path,) = (tmp_path / "outputs").rglob("summary.json")
    summary = strict_json(summary_path.read_text())
    assert summary["status"] == "completed" and summary["train_loss"] is None
    for metrics in (tmp_path / "outputs").rglob("metrics.jsonl"):  # none: no step was trained
        for line in metrics.read_text().splitlines():
            strict_json(line)
    rows = runs_json(tmp_path / "outputs", capsys)
    assert [row["status"] for row in rows] == ["completed"]


def test_runs_json_is_strict_whatever_a_config_holds(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    (run / ".hydra" / "config.yaml").write_text("optimizer:\n  lr: .nan\n  eps: .inf\n")
    (summary,) = runs_json(tmp_path, capsys)
    code, out, _ = call(["runs", tmp_path, "--json", "--columns", "run,optimizer.lr,optimizer.eps"], capsys)
    assert code == 0 and strict_json(out) == [{"name": "run", "optimizer.lr": None, "optimizer.eps": None}]
    (run / "summary.json").write_text('{"status": "completed", "best_val_loss": NaN, "steps": 3}')  # an old run's
    (row,) = runs_json(tmp_path, capsys)
    assert row["status"] == "completed" and row["best_val_loss"] is None


# ---- status: a dead run is not running -------------------------------------------------------------------
def test_a_run_marked_running_is_running_only_while_its_lock_is_held(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    lock = RunLock(run).acquire()
    try:
        assert [row["status"] for row in runs_json(tmp_path, capsys)] == ["running"]
    finally:
        lock.release()
    assert [row["status"] for row in runs_json(tmp_path, capsys)] == [DIED]
    (run / ".lock").write_text("12345\n")  # what a killed process leaves: a file no process locks
    assert [row["status"] for row in runs_json(tmp_path, capsys)] == [DIED]
    code, out, _ = call(["runs", tmp_path, "--filter", "status=running", "--json"], capsys)
    assert strict_json(out) == []
    code, out, _ = call(["show", run], capsys)
    assert code == 0 and f"Status {DIED}" in out and "train.resume=" in out
    shutil.copytree(run, tmp_path / "other")
    code, out, err = call(["compare", run, tmp_path / "other"], capsys)
    (status,) = [line for line in out.splitlines() if " status " in line]
    assert code == 0 and status.count(DIED) == 2 and "running" not in status, out + err


@pytest.mark.slow
def test_a_killed_run_is_shown_died_not_running(tmp_path, corpus, capsys):
    keys = {"train.max_iters": 100_000, "train.epochs": 1000, "train.eval_interval": 1000}
    command = [sys.executable, RUN, *tiny_overrides(tmp_path, corpus, **keys)]
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 50
        while not list((tmp_path / "outputs").rglob("metrics.jsonl")) and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "stderr").read_text()
            time.sleep(0.2)
        assert [row["status"] for row in runs_json(tmp_path / "outputs", capsys)] == ["running"]
    finally:
        process.kill()
        process.wait(timeout=30)
    (row,) = runs_json(tmp_path / "outputs", capsys)
    assert row["status"] == DIED
    code, out, _ = call(["runs", tmp_path / "outputs"], capsys)
    assert code == 0 and DIED in out and "running" not in out


# ---- text never becomes a control token ------------------------------------------------------------------
LITERAL = f"a document may quote {END_OF_TEXT} as text: {END_OF_TEXT}{END_OF_TEXT} twice"


def quoting_corpus(folder: Path, corpus: Path) -> list[str]:
    """Three documents quoting `<|endoftext|>` (at the start, inside, at the end), in `folder`."""
    prose = corpus.read_text()
    texts = [END_OF_TEXT + prose[:8000], prose[8000:16000] + LITERAL + prose[16000:20000], prose[20000:26000] + LITERAL]
    folder.mkdir()
    for index, text in enumerate(texts):
        (folder / f"{index}.txt").write_text(text)
    return texts


def test_a_corpus_quoting_the_end_of_text_token_keeps_that_text(tmp_path, corpus):
    """Trained on it, the run's token files hold one separator per document, and decode to the text."""
    from fragment_llm.data.tokenizer import load_tokenizer, tokenizer_hash

    texts = quoting_corpus(tmp_path / "docs", corpus)
    run = train_tiny_run(tmp_path, tmp_path / "docs", **{"train.max_iters": 2})
    data = prepare(tmp_path / "docs", tmp_path / "cache")  # the run's cache entry, read again
    assert data.tokenizer_hash == tokenizer_hash(load_tokenizer(run / "tokenizer.json"))
    eot = data.tokenizer.token_to_id(END_OF_TEXT)
    tokens = np.concatenate([data.train, data.val]).tolist()
    assert tokens.count(eot) == len(texts) and tokens[-1] == eot
    documents, start = [], 0
    for end in (index for index, token in enumerate(tokens) if token == eot):
        documents.append(data.tokenizer.decode(tokens[start:end]))
        start = end + 1
    assert documents == texts


def test_a_prompt_quoting_the_token_is_text_whatever_tokenizer_encodes_it(trained_run, tmp_path, capsys):
    from tokenizers import Tokenizer

    from fragment_llm.data.tokenizer import load_tokenizer
    from fragment_llm.model.generate import prompt_ids

    for tokenizer in (
        load_tokenizer(trained_run / "tokenizer.json"),
        Tokenizer.from_file(str(trained_run / "tokenizer.json")),
    ):
        eot = tokenizer.token_to_id(END_OF_TEXT)
        ids = prompt_ids(tokenizer, LITERAL)
        assert eot not in ids and tokenizer.decode(ids) == LITERAL
        assert prompt_ids(tokenizer, "") == [eot]  # only our code puts the token: an empty prompt starts a document
    code, out, err = call(
        ["generate", trained_run, "--prompt", END_OF_TEXT, "--max-new-tokens", "5", "--seed", "1"], capsys
    )
    assert code == 0 and out.startswith(END_OF_TEXT), err


def test_an_exported_tokenizer_keeps_the_token_spelled_in_text(trained_run, tmp_path, capsys):
    """With `split_special_tokens=True`, as training encodes text. A run with the chat tokens exports with it
    false by default: transformers tokenizes its chat template's rendering with that setting, and the
    template's own tokens must be matched (fragment_llm/export/README.md, "Chat")."""
    pytest.importorskip("transformers")
    from transformers import PreTrainedTokenizerFast

    from fragment_llm.data.tokenizer import load_tokenizer, text_ids

    code, _, err = call(["export", trained_run, "--out", tmp_path / "hf"], capsys)
    assert code == 0, err
    exported = PreTrainedTokenizerFast.from_pretrained(tmp_path / "hf")
    ids = exported(LITERAL, split_special_tokens=True)["input_ids"]
    assert ids == text_ids(load_tokenizer(trained_run / "tokenizer.json"), [LITERAL])[0]
    assert exported.convert_tokens_to_ids(END_OF_TEXT) not in ids


def test_eval_scores_text_quoting_the_token_as_text(trained_run, tmp_path, corpus):
    from fragment_llm.data.readers import text_documents
    from fragment_llm.model.evaluate import document_tokens
    from fragment_llm.train.from_run import load_run

    texts = quoting_corpus(tmp_path / "docs", corpus)
    trained = load_run(trained_run)
    tokens = document_tokens(trained.tokenizer, text_documents(str(tmp_path / "docs")))[0].tolist()
    assert tokens.count(trained.tokenizer.token_to_id(END_OF_TEXT)) == len(texts)


# ---- eval's split is the run's only while the corpus is unchanged ---------------------------------------
def test_eval_refuses_to_call_a_changed_corpus_the_runs_validation_split(tmp_path, corpus, capsys):
    data = tmp_path / "data.txt"
    shutil.copyfile(corpus, data)
    run = train_tiny_run(tmp_path, data, **{"train.max_iters": 10, "train.eval_interval": 5})
    code, out, err = call(["eval", run], capsys)
    assert code == 0 and f"Data: the run's validation split (text: {data})" in out and not err
    original = data.read_text()
    data.write_text(original + "\nA paragraph added after the run trained.\n")
    for checkpoint in ([], ["--checkpoint", "best"]):
        code, out, err = call(["eval", run, *checkpoint], capsys)
        assert_one_error_line(code, err, str(data), "changed since the run trained", "--data PATH")
        assert "Loss:" not in out
    code, out, err = call(["eval", run, "--data", data], capsys)
    assert code == 0 and f"Data: {data}" in out, err
    data.write_text(original)
    code, out, err = call(["eval", run, "--checkpoint", "best"], capsys)
    assert code == 0 and "the run's validation split" in out, err


def test_eval_refuses_a_corpus_folder_with_a_file_added(tmp_path, corpus, capsys):
    folder = tmp_path / "docs"
    quoting_corpus(folder, corpus)
    run = train_tiny_run(tmp_path, folder, **{"train.max_iters": 2})
    (folder / "3.txt").write_text(corpus.read_text()[30000:32000])
    code, _, err = call(["eval", run], capsys)
    assert_one_error_line(code, err, "changed since the run trained")
