"""Under a locale whose encoding is not UTF-8 (the C locale with Python's own fixes for it turned off: ASCII,
as a Windows code page is not UTF-8 either) a run, its tools and an export on German, Greek, Japanese and
emoji text end well: files are UTF-8 whatever the locale, and what the terminal cannot show is escaped.
File names that are not UTF-8 reach the files escaped and the terminal as the bytes they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, RUN, run_in_process, tiny_overrides

C_LOCALE = {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
SENTENCES = [
    "Die Straße über den Fluss ist größer als die Brücke, und Äpfel kosten mehr als Öl.",
    "Η γλώσσα αλλάζει κάθε μέρα στην Αθήνα και στη Θεσσαλονίκη.",
    "東京は日本の首都です。今日は天気がいいですね。",
    "Emoji 🙂🚀🌍 sind überall: 😀 grüßt 🎉 und 🐍 schreibt.",
]


def write_corpus(folder: Path) -> Path:
    """About 40 KB of the sentences above in varying order, one short document per paragraph."""
    documents = [" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(len(SENTENCES))] * 40
    folder.mkdir(parents=True)
    path = folder / "korpus.txt"
    path.write_text("\n\n".join(documents), encoding="utf-8")
    return path


def run_in_c_locale(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python ARGS...` under the C locale; its output as bytes (it may hold any)."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONIOENCODING"}
    env.update(C_LOCALE, PYTHONPATH=str(ROOT), COLUMNS="250")
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, timeout=600)
    shown = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, shown
    assert b"Traceback" not in result.stdout + result.stderr, shown
    return result


def utf8_json(path: Path):
    return json.loads(path.read_bytes().decode("utf-8"))


def as_this_locale_reads(path: Path) -> str:
    """The name a process under the C locale has for `path`: its bytes, those over 127 as surrogates."""
    return os.fsencode(path).decode("ascii", "surrogateescape")


@pytest.mark.slow
def test_a_run_its_tools_and_an_export_under_the_c_locale(tmp_path):
    from tokenizers import Tokenizer

    corpus = write_corpus(tmp_path / "größer_Ordner")
    outputs = tmp_path / "outputs"
    # Hydra takes a value with letters beyond ASCII quoted.
    keys = {"data.path": f"'{corpus}'", "model.vocab_size": 400, "train.max_iters": 10, "train.sample_every": 5}
    run_in_c_locale([RUN, *tiny_overrides(tmp_path, corpus, **keys)], cwd=tmp_path)
    run = next(outputs.glob("*/*/summary.json")).parent
    assert utf8_json(run / "summary.json")["status"] == "completed"
    config = yaml.safe_load((run / ".hydra/config.yaml").read_bytes().decode("utf-8"))
    assert config["data"]["path"] == as_this_locale_reads(corpus)  # the name it opened, escaped in the file
    (run / "train.log").read_bytes().decode("utf-8")

    vocabulary = utf8_json(run / "tokenizer.json")["model"]["vocab"]
    assert any(not token.isascii() for token in vocabulary)
    tokenizer = Tokenizer.from_file(str(run / "tokenizer.json"))
    for word in ("Straße", "γλώσσα", "東京", "🙂"):
        ids = tokenizer.encode(word).ids
        assert tokenizer.decode(ids) == word
        assert len(ids) < len(word.encode()), word  # merges were learned over its bytes

    tool = ["-m", "fragment_llm"]
    generated = run_in_c_locale([*tool, "generate", str(run), "--prompt", "größer", "--max-new-tokens", "20"], tmp_path)
    assert generated.stdout.startswith(b"gr\\xf6\\xdfer")  # what ASCII cannot show, escaped
    evaluated = run_in_c_locale([*tool, "eval", str(run), "--data", str(corpus)], tmp_path)
    assert b"Bits per byte" in evaluated.stdout
    exported = tmp_path / "Export_ö"
    run_in_c_locale([*tool, "export", str(run), "--format", "hf", "--out", str(exported)], tmp_path)
    assert utf8_json(exported / "tokenizer.json") == utf8_json(run / "tokenizer.json")
    for path in exported.glob("*.json"):
        utf8_json(path)
    listed = run_in_c_locale([*tool, "runs", str(outputs)], tmp_path)
    assert run.name.encode() in listed.stdout
    shown = run_in_c_locale([*tool, "show", str(run)], tmp_path)
    assert os.fsencode(corpus) in shown.stdout  # a file name reaches the terminal as the bytes it is


def test_a_file_name_that_is_not_utf8_is_escaped_in_the_run_files(tmp_path, corpus):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))  # Latin-1: no UTF-8 name
    folder.mkdir()
    latin1_corpus = folder / "docs.txt"
    latin1_corpus.write_bytes(corpus.read_bytes())
    cache = os.fsdecode(bytes(tmp_path) + b"/cach\xe9")  # in a line of train.log
    keys = {"data.path": f"'{latin1_corpus}'", "paths.cache": f"'{cache}'", "train.max_iters": 5}
    overrides = tiny_overrides(tmp_path, latin1_corpus, **keys)
    result = run_in_process([RUN, *overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = next((tmp_path / "outputs").glob("*/*/summary.json")).parent
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "summary.json", "train.log", "metrics.jsonl"):
        (run / name).read_bytes().decode("utf-8")
    config = yaml.safe_load((run / ".hydra/config.yaml").read_text(encoding="utf-8"))
    assert config["data"]["path"] == str(latin1_corpus)  # the same name, read back
    assert "cach\\udce9/tokens" in (run / "train.log").read_text(encoding="utf-8")

    env = dict(os.environ, LC_ALL="C.UTF-8", PYTHONPATH=str(ROOT), COLUMNS="250")
    command = [sys.executable, "-m", "fragment_llm", "show", str(run)]
    shown = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert shown.returncode == 0 and b"Traceback" not in shown.stderr, shown.stderr.decode("utf-8", "replace")
    assert bytes(latin1_corpus) in shown.stdout


def test_tensorboard_is_not_started_under_a_folder_name_it_cannot_write(tmp_path, corpus):
    outputs = os.fsdecode(bytes(tmp_path) + b"/L\xe4ufe")  # Latin-1; under the C locale "Läufe" is the same
    result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus, **{"paths.outputs": f"'{outputs}'"})], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: hydra.run.dir=") and result.stderr.count("\n") == 1
    assert "LC_ALL=C.UTF-8" in result.stderr and "logging.tensorboard=false" in result.stderr
    assert not Path(outputs).exists()
