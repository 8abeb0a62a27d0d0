"""Byte-level BPE tokenizer: train with HF `tokenizers`, save, load, fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from ..files import UnreadableFile, read_checked

END_OF_TEXT = "<|endoftext|>"
# The chat format's tokens (data/chat.py): every tokenizer trained here reserves them, after
# `<|endoftext|>`, so that any run can be fine-tuned to chat without growing its vocabulary.
ROLE_TOKENS = {role: f"<|{role}|>" for role in ("system", "user", "assistant")}
END_OF_TURN = "<|end|>"
CHAT_TOKENS = (*ROLE_TOKENS.values(), END_OF_TURN)
# GPT-2's pre-tokenizer (tokenizers' ByteLevel) splits text into words with this regex. BPE training
# spends time in proportion to a word's length at every merge, so a long run of one kind of character
# (a line of digits, CJK text, minified code, a block of spaces) is one huge word that trains at
# kilobytes per second. The same regex with every run bounded to MAX_RUN characters splits ordinary
# text exactly as GPT-2 does and cuts long runs into words of at most MAX_RUN (+1 leading space).
GPT2_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
MAX_RUN = 1024


def byte_level_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """GPT-2's byte-level pre-tokenizer, with runs longer than MAX_RUN characters cut."""
    bounded_words = GPT2_WORDS.replace("+", f"{{1,{MAX_RUN}}}")
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(bounded_words), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE; `<|endoftext|>` (id 0) separates documents, and the chat
    tokens (ids 1-4) are reserved."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = byte_level_pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT, *CHAT_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return text_only(tokenizer)


def text_only(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer`, set to encode the spelling of a special token in text (`<|endoftext|>` in a document,
    a prompt) as the characters it is: the special tokens come only from our code (between documents,
    to start a sample), never from text. tokenizers does not save this setting in tokenizer.json, so
    every tokenizer made or loaded here gets it, and text_ids sets it on any other."""
    tokenizer.encode_special_tokens = True
    return tokenizer


def text_ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, encoded as text only (see text_only)."""
    return [encoding.ids for encoding in text_only(tokenizer).encode_batch(texts, add_special_tokens=False)]


class TokenizerError(ValueError):
    """A tokenizer that does not load, or is not one of ours (no `<|endoftext|>`): the reason, one line."""


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer saved at `path`, read back checked (files.read_checked: a regular file, its size)."""
    try:
        text = read_checked(path).decode("utf-8")
    except UnreadableFile as error:
        raise TokenizerError(error.reason) from None
    except OSError as error:
        raise TokenizerError(error.strerror or str(error)) from None
    except UnicodeDecodeError:
        raise TokenizerError("it is not UTF-8 text") from None
    return tokenizer_from_str(text)


def tokenizer_from_str(text: str) -> Tokenizer:
    return _checked(lambda: Tokenizer.from_str(text))


def _checked(load: Callable[[], Tokenizer]) -> Tokenizer:
    try:
        tokenizer = load()
    except Exception as error:  # tokenizers raises bare Exceptions; a value that is no string, a TypeError
        raise TokenizerError((str(error).splitlines() or [type(error).__name__])[0]) from None
    if end_of_text_id(tokenizer) is None:
        raise TokenizerError(f"it has no {END_OF_TEXT} token")
    return text_only(tokenizer)


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    return hashlib.blake2b(tokenizer.to_str().encode(), digest_size=8).hexdigest()


def end_of_text_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(END_OF_TEXT)
