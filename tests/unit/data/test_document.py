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


def json_lines(count: int) -> tuple[list[str], bytes]:
    import json

    texts = [f"record {i}: " + "ünïcode and words " * (i % 9 + 1) for i in range(count)]
    return texts, "".join(json.dumps({"text": text}) + "\n" for text in texts).encode()


@pytest.mark.parametrize("name", ["one.jsonl", "one.jsonl.gz", "one.txt.bz2"])
def test_a_single_file_is_cut_between_lines_and_both_parts_read_back(tmp_path, name):
    import bz2
    import gzip

    texts, raw = json_lines(5000)
    compress = {".gz": gzip.compress, ".bz2": bz2.compress}.get(tmp_path.joinpath(name).suffix, lambda data: data)
    (tmp_path / name).write_bytes(compress(raw))
    (document,) = collect_documents(text_config(tmp_path / name))
    train, val = document.halves(0.9)
    read = [text for part in (train, val) for text in part.texts() if text is not None]
    if name.endswith(".txt.bz2"):  # plain text: the parts are the decompressed bytes, cut at a line break
        assert "".join(read) == raw.decode() and read[-1].endswith("\n")
    else:
        assert read == texts and val.first_line == len([text for text in train.texts() if text is not None]) + 1


def test_a_bad_record_in_the_validation_part_is_named_by_its_line_in_the_file(tmp_path):
    texts, raw = json_lines(1000)
    lines = raw.decode().splitlines(keepends=True)
    lines[950] = "{broken\n"
    (tmp_path / "c.jsonl").write_text("".join(lines))
    (document,) = collect_documents(text_config(tmp_path / "c.jsonl"))
    train, val = document.halves(0.9)
    list(train.texts())
    with pytest.raises(ConfigError, match=r"data: .*c.jsonl line 951 is not JSON"):
        list(val.texts())


def test_a_json_document_over_many_lines_is_not_json_lines(tmp_path):
    (tmp_path / "list.json").write_text('[\n  {"text": "a"},\n  {"text": "b"}\n]\n')
    (document,) = collect_documents(text_config(tmp_path / "list.json"))
    with pytest.raises(ConfigError, match=r"list.json is not JSON Lines .* write one JSON object per line"):
        list(document.texts())


def test_a_byte_order_mark_and_windows_line_ends_are_json_lines_too(tmp_path):
    (tmp_path / "windows.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "first"}\r\n{"text": "second"}\r\n')
    (document,) = collect_documents(text_config(tmp_path / "windows.jsonl"))
    assert list(document.texts()) == ["first", None, "second"]
