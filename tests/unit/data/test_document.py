"""A document read in blocks as UTF-8 (data/document.py): streamed back exactly, and one line when its
file can no longer be read."""

from __future__ import annotations

import pytest
from helpers import text_config

from fragment_llm.config.schema import ConfigError
from fragment_llm.data.corpus import collect_documents, fingerprint


def test_documents_stream_back_exactly_across_block_boundaries(tmp_path):
    text = "".join(f"línea {i} ✓ ünïcode\n" for i in range(20_000)) + "tail without newline " * 5000
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    (document,) = collect_documents(text_config(path))
    pieces = list(document.texts())
    assert len(pieces) > 5
    assert "".join(pieces) == text
    assert all(piece.endswith("\n") for piece in pieces[:-2])


def test_a_file_that_becomes_unreadable_after_collection_is_a_one_line_error(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(f"text of {name}\n")
    documents = collect_documents(text_config(folder))
    (folder / "b.txt").unlink()
    (folder / "b.txt").mkdir()
    with pytest.raises(ConfigError) as error:
        fingerprint(documents)
    assert str(error.value).startswith(f"data: cannot read {folder / 'b.txt'}: Is a directory; ")
