"""The faster encoder (data/fast_encoder.py): where it encodes with tiktoken, the ids are exactly those of
tokenizers, on every bundled corpus and on adversarial text; where they might not be (a long run, a
character the regex engines class otherwise, a tokenizer of another structure), tokenizers encodes."""

from __future__ import annotations

import json
import logging
import sys
import unicodedata

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from fragment_llm.config.schema import ConfigError
from fragment_llm.data import fast_encoder
from fragment_llm.data.fast_encoder import (
    FAST_HINT,
    FAST_MIN_BYTES,
    CorpusEncoder,
    corpus_encoder,
    encode_threads,
    encoding_with,
    splits_alike,
    tiktoken_encoding,
    tiktoken_ranks,
)
from fragment_llm.data.readers import pydoc_documents, stdlib_documents
from fragment_llm.data.tokenizer import (
    CHAT_TOKENS,
    END_OF_TEXT,
    GPT2_WORDS,
    MAX_RUN,
    byte_level_pre_tokenizer,
    text_ids,
    train_tokenizer,
)

pytest.importorskip("tiktoken")  # the `fast` extra, in `dev`

# Runs of each class just within and just past MAX_RUN, with and without a leading space, and far past it,
# between characters of another class.
RUN_CHARACTERS = {
    "letters": "x",
    "cjk": "漢",
    "digits": "7",
    "punctuation": "=",
    "spaces": " ",
    "newlines": "\n",
    "nbsp": "\u00a0",
    "file separator": "\x1c",  # Python's str.isspace, but no regex engine's \s: a run of "other"
}
RUN_LENGTHS = (MAX_RUN - 1, MAX_RUN, MAX_RUN + 1, 3 * MAX_RUN + 7)
WHITESPACE = ("spaces", "newlines", "nbsp")  # a leading space joins their run


def run_text(name: str, length: int, space: bool) -> str:
    char = RUN_CHARACTERS[name]
    edge = "1" if char.isalpha() else "a"
    return f"{edge}{' ' if space else ''}{char * length}{edge}"


RUNS = {
    f"{name} x {length}{' after a space' if space else ''}": run_text(name, length, space)
    for name in RUN_CHARACTERS
    for length in RUN_LENGTHS
    for space in (False, True)
}
ADVERSARIAL = {
    **RUNS,
    "mixed whitespace": "a" + "\t \n\r\x0b\x0c\u2028\u3000" * 400 + "b",
    "separators x1c-x1f": "a" + "\x1c\x1d\x1e\x1f" * 600 + " b",
    "base64": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkrLw" * 60 + "==\n",
    "special tokens in text": f"one{END_OF_TEXT}two {END_OF_TEXT}\n{END_OF_TEXT}{''.join(CHAT_TOKENS)} <|end|>x",
    "emoji and ZWJ": "👩‍👩‍👧‍👦 family, 🇫🇷 flag, 👍🏽 tone, 🏳️‍🌈 " * 20,
    "combining marks": "e\u0301 A\u030a Z\u0335\u0321\u0358a\u0336\u0327l\u0337g\u0338o " * 50 + "\u0301" * 1100,
    "CRLF": "line one\r\nline two\r\n\r\n\rbare CR\n\r\n" * 40,
    "contractions": "it's IT'S we'll they're I'd y'all's 's't're've'm'll'd ''s" * 10,
    "invisible": "\ufeffBOM \u200b\u200c\u200d zero widths \u200e\u200f\u202e marks \u2060\u00ad",
    "far planes": "tag \U000e0041\U000e007f private \ue000\U000f0000 unassigned \U00040000 \U0010ffff",
    "noncharacters": "\ufffe\uffff\ufdd0 \U0001fffe",
    "mixed scripts": "Привет мир, γειά σου, مرحبا بالعالم, שלום, नमस्ते, こんにちは世界, 안녕하세요 123٤٥٦ ⅷ ½",
}


def identical(tokenizer: Tokenizer, texts: list[str]) -> None:
    """The encoder with tiktoken gives each text exactly tokenizers' ids."""
    encoding = tiktoken_encoding(tokenizer)
    assert encoding is not None, tiktoken_ranks(tokenizer)
    with CorpusEncoder(tokenizer, encoding) as encoder:
        ours = encoder.encode(texts)
    for text, got, expected in zip(texts, ours, text_ids(tokenizer, texts), strict=True):
        assert got.dtype == np.uint32
        assert got.tolist() == expected, f"ids differ on {text[:60]!r}..."


@pytest.fixture(scope="module")
def pydoc_texts() -> list[str]:
    return [text for document in pydoc_documents() for text in document.texts()]


@pytest.fixture(scope="module", params=[300, 2048], ids=lambda vocab: f"vocab{vocab}")
def tokenizer(request, pydoc_texts) -> Tokenizer:
    """A tokenizer trained by our train_tokenizer on the bundled corpus and the adversarial texts, so that
    its merges include runs of spaces, digits, punctuation and the like."""
    return train_tokenizer([*pydoc_texts, *ADVERSARIAL.values()], request.param, min_frequency=2)


def test_identical_ids_on_the_bundled_documentation(tokenizer, pydoc_texts):
    assert all(splits_alike(text) for text in pydoc_texts)  # tiktoken encodes every one of them
    identical(tokenizer, pydoc_texts)


@pytest.mark.slow
@pytest.mark.parametrize("vocab_size", [4096, 16384])
def test_identical_ids_on_the_standard_library(vocab_size, pydoc_texts):
    texts = [text for document in stdlib_documents() for text in document.texts()]
    stdlib_tokenizer = train_tokenizer(texts, vocab_size, min_frequency=2)
    assert sum(map(splits_alike, texts)) > 0.99 * len(texts)
    identical(stdlib_tokenizer, texts + pydoc_texts)


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_identical_ids_on_adversarial_text(tokenizer, name):
    identical(tokenizer, [ADVERSARIAL[name], ADVERSARIAL[name][:100]])


def category_samples() -> dict[str, str]:
    """Up to 64 characters of each Unicode general category (Python's tables), spread over it."""
    members: dict[str, list[str]] = {}
    for code in range(sys.maxunicode + 1):
        members.setdefault(unicodedata.category(chr(code)), []).append(chr(code))
    return {category: "".join(chars[:: max(1, len(chars) // 64)]) for category, chars in sorted(members.items())}


CATEGORIES = category_samples()


@pytest.mark.parametrize("category", [category for category in CATEGORIES if category != "Cs"])
def test_identical_ids_on_every_unicode_category(tokenizer, category):
    chars = CATEGORIES[category]
    texts = [
        chars,  # a run of the category
        " ".join(chars),  # each after a space
        "".join(f"a{char}1{char}." for char in chars),  # between letters, digits and punctuation
        "\n".join(f"{char * 3} {char}'s" for char in chars),
        chars[0] * (MAX_RUN + 5) + " " + chars[-1] * MAX_RUN,  # a long run: tokenizers encodes it
    ]
    identical(tokenizer, texts)


@pytest.mark.slow
def test_identical_ids_on_every_code_point(tokenizer):
    """Every code point but the surrogates, 1,000 to a text."""
    text = "".join(chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code < 0xE000)
    identical(tokenizer, [text[start : start + 1000] for start in range(0, len(text), 1000)])


def test_a_text_goes_to_tiktoken_only_where_its_split_is_ours():
    bounded = pre_tokenizers.Split(Regex(GPT2_WORDS.replace("+", f"{{1,{MAX_RUN}}}")), behavior="isolated")
    unbounded = pre_tokenizers.Split(Regex(GPT2_WORDS), behavior="isolated")
    for name, text in [*ADVERSARIAL.items(), *CATEGORIES.items()]:
        if name == "Cs":
            continue
        if splits_alike(text):
            assert bounded.pre_tokenize_str(text) == unbounded.pre_tokenize_str(text), name
    for name in RUN_CHARACTERS:
        for length in RUN_LENGTHS:
            for space in (False, True):
                longest = length + (space and name in WHITESPACE)
                assert splits_alike(run_text(name, length, space)) == (longest <= MAX_RUN), (name, length, space)


def test_a_character_the_regex_engines_class_otherwise_goes_to_tokenizers(monkeypatch):
    """As if tokenizers' Unicode tables were older than tiktoken's and had no letter `ꟊ` (U+A7CA)."""
    monkeypatch.setattr(fast_encoder, "_CLASSES", np.full(0x110000, ord("?"), dtype=np.uint8))
    older = fast_encoder._tokenizers_members
    monkeypatch.setattr(
        fast_encoder, "_tokenizers_members", lambda pattern, probe: older(pattern, probe.replace("\ua7ca", ""))
    )
    assert splits_alike("ordinary text, é and 漢字")
    assert not splits_alike("a letter \ua7ca of Unicode 14")
    assert fast_encoder._CLASSES[0xA7CA] == ord("X") and fast_encoder._CLASSES[ord("é")] == ord("L")


def test_tiktoken_alone_would_differ_where_the_encoder_does_not_use_it(tokenizer):
    """A run past MAX_RUN is one word to tiktoken's regex, encoded whole: its ids are not ours, which
    cut it at MAX_RUN (here between the `h` and `e` of a `he`)."""
    run = "a" + "he" * 600
    assert not splits_alike(run)
    assert tiktoken_encoding(tokenizer).encode_ordinary(run) != text_ids(tokenizer, [run])[0]
    identical(tokenizer, [run])


def test_a_lone_surrogate_is_a_clear_error_whichever_library_encodes(tokenizer):
    lone = json.loads('"half of a pair: \\ud800, "')  # what JSON Lines can hold
    for encoder in (CorpusEncoder(tokenizer, tiktoken_encoding(tokenizer)), CorpusEncoder(tokenizer)):
        with encoder, pytest.raises(ConfigError, match="lone surrogate .U\\+D800") as error:
            encoder.encode(["fine", "é" + lone])
        assert "half of a pair" in str(error.value) and "\n" not in str(error.value)


def hand_made(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """A tokenizer of our structure with these tokens and merges, on top of the 256 bytes."""
    byte_tokens = {char: index + 1 for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE({END_OF_TEXT: 0, **byte_tokens, **vocab}, merges))
    tokenizer.pre_tokenizer = byte_level_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([END_OF_TEXT])
    return tokenizer


def test_a_tokenizer_whose_tokens_do_not_encode_as_themselves_is_left_to_tokenizers():
    """`abc` made from `ab`+`c`, but `bc` merges first: tokenizers leaves the word `abc` as `a`+`bc`,
    tiktoken would join those two into `abc`. The check finds it before any text is encoded."""
    tokenizer = hand_made({"bc": 257, "ab": 258, "abc": 259}, [("b", "c"), ("a", "b"), ("ab", "c")])
    assert tiktoken_ranks(tokenizer) == "some of its tokens do not encode as themselves"
    assert text_ids(tokenizer, ["abc"])[0] == [tokenizer.token_to_id("a"), 257]
    # The same tokens made in an order tiktoken follows (and, like tokenizers trained before the chat
    # tokens, with `<|endoftext|>` as its only special token): exact.
    consistent = hand_made({"ab": 257, "bc": 258, "abc": 259}, [("a", "b"), ("b", "c"), ("ab", "c")])
    identical(consistent, ["abc abcbc bcab cab"])


GPT2_PRE_TOKENIZER = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda spec: spec.update(normalizer={"type": "NFC"}), "its normalizer differ"),
        (lambda spec: spec["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=GPT2_WORDS), "pre-tokenizer"),
        (lambda spec: spec.update(pre_tokenizer=GPT2_PRE_TOKENIZER), "pre-tokenizer"),
        (lambda spec: spec["model"].update(byte_fallback=True), "BPE settings"),
        (lambda spec: spec["model"].update(ignore_merges=True), "BPE settings"),
        (lambda spec: spec["added_tokens"][0].update(special=False), "added tokens"),
        (lambda spec: spec["model"]["merges"].reverse(), "out of the order of ids"),
        (lambda spec: spec["model"]["merges"].pop(), "not made by exactly one merge"),
        (lambda spec: spec["model"]["vocab"].pop("!"), "all 256 bytes"),
    ],
    ids=["normalizer", "unbounded runs", "GPT-2's pre-tokenizer", "byte fallback", "ignore_merges", "eot as text",
         "merge order", "missing merge", "missing byte"],
)  # fmt: skip
def test_a_tokenizer_of_another_structure_is_left_to_tokenizers(tokenizer, change, reason, caplog):
    spec = json.loads(tokenizer.to_str())
    change(spec)
    other = Tokenizer.from_str(json.dumps(spec))
    assert reason in tiktoken_ranks(other)
    fast_encoder._log_once.cache_clear()
    with caplog.at_level(logging.INFO), encoding_with("tiktoken"), corpus_encoder(other, FAST_MIN_BYTES) as encoder:
        assert encoder.tiktoken is None
        assert encoder.encode(["some text"])[0].tolist() == text_ids(other, ["some text"])[0]
    assert caplog.text.count("encoding with tokenizers, not tiktoken") == 1


def test_small_corpora_and_a_missing_tiktoken_take_tokenizers(tokenizer, monkeypatch, caplog):
    with corpus_encoder(tokenizer, FAST_MIN_BYTES - 1) as encoder:
        assert encoder.tiktoken is None  # not worth checking the tokenizer and the regex engines
    with corpus_encoder(tokenizer, FAST_MIN_BYTES) as encoder:
        assert encoder.tiktoken is not None
    with encoding_with("tokenizers"), corpus_encoder(tokenizer, 10 * FAST_MIN_BYTES) as encoder:
        assert encoder.tiktoken is None
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken raises ImportError
    fast_encoder._log_once.cache_clear()
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            with corpus_encoder(tokenizer, FAST_MIN_BYTES) as encoder:
                assert encoder.tiktoken is None
    assert caplog.text.count(FAST_HINT) == 1 and "pip install 'fragment-llm[fast]'" in FAST_HINT


def test_tiktoken_gets_the_threads_tokenizers_has(monkeypatch):
    for name in ("RAYON_RS_NUM_THREADS", "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
        monkeypatch.delenv(name, raising=False)
    assert encode_threads() == len(__import__("os").sched_getaffinity(0))
    monkeypatch.setenv("RAYON_RS_NUM_THREADS", "3")
    assert encode_threads() == 3
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert encode_threads() == 1
