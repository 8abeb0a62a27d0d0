"""A corpus collected, checked and split (data/corpus.py): bad text is one line naming the file, the
split is by document and cuts a single one at a line break, and long passes log their progress."""

from __future__ import annotations

import logging

import pytest
from helpers import prepare, text_config

from fragment_llm.config.schema import ConfigError
from fragment_llm.data import corpus as corpus_module
from fragment_llm.data.corpus import collect_documents, fingerprint, split_documents
from fragment_llm.data.document import Document


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10, "is not UTF-8 text"),
        ("caf\xe9 latin-1".encode("latin-1") * 100, "is not UTF-8 text"),
        (b"", "is empty"),
        (b"   \n\n\t  \n", "holds only whitespace"),
    ],
)
def test_bad_corpora_are_one_line_errors_naming_the_file(tmp_path, content, needle):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        fingerprint(collect_documents(text_config(path)))
    message = str(error.value)
    assert needle in message and "\n" not in message
    assert "bad.txt" in message


def test_split_by_document_is_deterministic_and_complete():
    documents = [Document(f"d{i}", 100, content=b"x" * 100) for i in range(10)]
    train, val = split_documents(documents, 0.2)
    assert [d.name for d in train] == [f"d{i}" for i in range(8)]
    assert [d.name for d in val] == ["d8", "d9"]
    assert split_documents(documents, 0.2) == (train, val)


def test_a_single_document_is_cut_at_a_line_break(tmp_path):
    text = "".join(f"line {i:04d}\n" for i in range(1000))
    path = tmp_path / "one.txt"
    path.write_text(text)
    train, val = split_documents(collect_documents(text_config(path)), 0.1)
    train_text = "".join(train[0].texts())
    val_text = "".join(val[0].texts())
    assert train_text + val_text == text
    assert train_text.endswith("\n") and val_text.startswith("line ")
    assert 0.08 < len(val_text) / len(text) < 0.12


def progress_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if " MB (" in record.getMessage()]


def test_progress_is_logged_for_long_passes_only(tmp_path, corpus, caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        prepare(corpus, tmp_path / "quiet")
    assert "Data: encoded in" in caplog.text and progress_lines(caplog) == []

    caplog.clear()
    monkeypatch.setattr(corpus_module, "PROGRESS_SECONDS", 0.0)  # as if every pass were a long one
    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        prepare(corpus, tmp_path / "verbose")
    progress = progress_lines(caplog)
    for what in ("Data: checking the corpus", "Tokenizer: reading the training split", "Data: encoding"):
        assert any(line.startswith(f"{what}: ") and line.endswith("MB/s)") for line in progress), what
