"""Records (data/records.py): a JSON Lines line's text at data.text_field, nested by dots, and the reason
a record gives no text."""

from __future__ import annotations

import pytest

from fragment_llm.data.records import BadRecord, Skips, TextField, json_text


def test_the_text_at_a_field_or_a_dotted_path():
    assert json_text('{"text": "hello", "id": 1}', TextField()) == "hello"
    assert json_text('{"meta": {"body": "deep"}}', TextField("meta.body")) == "deep"
    assert json_text('{"story": "once"}', TextField("story")) == "once"
    assert json_text("   ", TextField()) is None  # a blank line is no record


@pytest.mark.parametrize(
    "line,field,reason",
    [
        ("{not json", "text", "is not JSON (Expecting property name"),
        ("[1, 2]", "text", "is a JSON list, not an object with a `text` field"),
        ('"just a string"', "text", "is a JSON string, not an object"),
        ('{"body": "x", "id": 3}', "text", "has no field `text` (the record has: body, id)"),
        ('{"meta": 5}', "meta.body", "has no field `meta.body` (meta has: a number)"),
        ('{"meta": {"title": "t"}}', "meta.body", "has no field `meta.body` (meta has: title)"),
        ('{"text": 5}', "text", "has a number in `text`, not a string"),
        ('{"text": null}', "text", "has a null in `text`, not a string"),
        ('{"text": ["a"]}', "text", "has a list in `text`, not a string"),
        ('{"text": "a\\ud800b"}', "text", "has a lone surrogate"),
        ("[" * 100_000 + "]" * 100_000, "text", "nested too deeply"),
    ],
)
def test_each_bad_record_says_why(line, field, reason):
    with pytest.raises(BadRecord) as caught:
        json_text(line, TextField(field))
    assert reason in str(caught.value)


def test_skips_count_and_keep_the_first():
    skips = Skips()
    skips.add("a.jsonl line 3", "is not JSON")
    skips.add("a.jsonl line 9", "has no field `text`")
    assert skips.count == 2
    assert "skipped 2 bad records" in skips.summary() and "a.jsonl line 3: is not JSON" in skips.summary()


def test_how_texts_are_read_is_part_of_the_corpus_hash():
    assert TextField("text").key() != TextField("body").key() != TextField("body", skip_bad=True).key()
