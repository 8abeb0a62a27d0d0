"""The byte-level BPE tokenizer (data/tokenizer.py): long runs of one kind cut, ordinary text split as
GPT-2 splits it, and any text decoded back exactly."""

from __future__ import annotations

import pytest
from tokenizers import pre_tokenizers

from fragment_llm.data.tokenizer import MAX_RUN, byte_level_pre_tokenizer, train_tokenizer

LONG_RUNS = {
    "letters": "x" * 10_000,
    "digits": "7" * 10_000,
    "spaces": "a" + " " * 10_000 + "b",
    "newlines": "a" + "\n" * 10_000 + "b",
    "punctuation": "=-" * 5_000,
    "cjk": "漢字" * 5_000,
    "base64": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkrLw" * 200,
}


@pytest.mark.parametrize("run", LONG_RUNS, ids=list(LONG_RUNS))
def test_the_pre_tokenizer_cuts_long_runs(run):
    pieces = byte_level_pre_tokenizer().pre_tokenize_str(LONG_RUNS[run])
    assert max(end - start for _, (start, end) in pieces) <= MAX_RUN + 1  # + a word's leading space


def test_ordinary_text_is_split_exactly_as_gpt2_splits_it():
    from pydoc_data.topics import topics  # the bundled corpus, ASCII-art tables included: the defaults' text

    for text in topics.values():
        gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)
        assert byte_level_pre_tokenizer().pre_tokenize_str(text) == gpt2


def test_decoding_gives_back_the_exact_text(corpus):
    tricky = [
        "👩‍👩‍👧‍👦 family, 🇫🇷 flag, e\u0301 and \u00e9, Å and A\u030a",
        "é" * 200 + " " + "漢字" * 100 + "\t\t\r\n" + " " * 300 + "end",
        LONG_RUNS["base64"] + "==\n" + LONG_RUNS["punctuation"],
        "\x00\x01 control \ufeff BOM \u200b zero width \U0010ffff",
    ]
    tokenizer = train_tokenizer([corpus.read_text()[:20_000], *tricky], vocab_size=512, min_frequency=2)
    for text in tricky:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
