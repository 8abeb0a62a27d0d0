"""Byte-level BPE tokenizer: train with HF `tokenizers`, save, load, fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE; `<|endoftext|>` (id 0) separates documents."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    return hashlib.blake2b(tokenizer.to_str().encode(), digest_size=8).hexdigest()


def end_of_text_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id(END_OF_TEXT)
