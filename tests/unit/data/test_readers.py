"""Corpus reading and validation, the split, the token cache, and batch sampling."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from fragment_llm.config.schema import ConfigError, DataConfig, DataSource
from fragment_llm.data import cache as cache_module
from fragment_llm.data.batches import TrainBatches, eval_batches
from fragment_llm.data.cache import prepare_data
from fragment_llm.data.corpus import collect_documents, fingerprint, split_documents
from fragment_llm.data.document import Document
from fragment_llm.data.tokenizer import END_OF_TEXT


def text_config(path, val_fraction: float = 0.1) -> DataConfig:
    return DataConfig(source=DataSource.text, path=str(path), val_fraction=val_fraction)


def prepare(path, cache, **keys):
    options = dict(vocab_size=512, block_size=128, min_frequency=2, retrain=False, cache_dir=cache)
    options.update(keys)
    return prepare_data(text_config(path), **options)


def test_documents_stream_back_exactly_across_block_boundaries(tmp_path):
    text = "".join(f"línea {i} ✓ ünïcode\n" for i in range(20_000)) + "tail without newline " * 5000
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    (document,) = collect_documents(text_config(path))
    pieces = list(document.texts())
    assert len(pieces) > 5
    assert "".join(pieces) == text
    assert all(piece.endswith("\n") for piece in pieces[:-2])


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


def test_missing_paths_and_empty_folders_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        collect_documents(text_config(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no .txt files"):
        collect_documents(text_config(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="matches no files"):
        collect_documents(text_config(tmp_path / "*.md"))


def test_folders_and_globs_give_sorted_documents(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt", "notes.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"text of {name}\n")
    names = [d.name for d in collect_documents(text_config(tmp_path))]
    assert [n.rsplit("/", 1)[-1] for n in names] == ["a.txt", "b.txt", "c.txt"]
    names = [d.name for d in collect_documents(text_config(tmp_path / "**" / "*.md"))]
    assert [n.rsplit("/", 1)[-1] for n in names] == ["notes.md"]


def test_bundled_corpora_are_there():
    pydoc = collect_documents(DataConfig(source=DataSource.pydoc))
    assert len(pydoc) > 50 and 400_000 < sum(d.size for d in pydoc) < 1_000_000
    stdlib = collect_documents(DataConfig(source=DataSource.stdlib))
    assert sum(d.size for d in stdlib) > 5_000_000
    assert not any("/test/" in d.name for d in stdlib)


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


def test_prepare_trains_encodes_and_caches(tmp_path, corpus, caplog, monkeypatch):
    cache = tmp_path / "cache"
    first = prepare(corpus, cache)
    assert isinstance(first.train, np.memmap) and isinstance(first.val, np.memmap)
    assert first.train.dtype == np.uint16
    assert first.vocab_size == 512
    assert first.tokenizer.token_to_id(END_OF_TEXT) == 0
    assert first.train_bytes + first.val_bytes == corpus.stat().st_size
    sample = corpus.read_text()[:2000]
    assert first.tokenizer.decode(first.tokenizer.encode(sample).ids) == sample

    def forbidden(*args, **kwargs):
        raise AssertionError("a second run on the same corpus must not tokenize")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "train_tokenizer", forbidden)
        patch.setattr(cache_module, "_encode", forbidden)
        with caplog.at_level(logging.INFO, logger="fragment_llm"):
            second = prepare(corpus, cache)
    assert "reusing" in caplog.text
    assert np.array_equal(first.train, second.train) and np.array_equal(first.val, second.val)
    assert second.seconds < 1.0

    retrained = prepare(corpus, cache, retrain=True)
    assert retrained.tokenizer_hash == first.tokenizer_hash  # BPE training is deterministic


def test_a_corpus_too_small_for_one_block_is_an_error(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("A short text.\n" * 20)
    with pytest.raises(ConfigError) as error:
        prepare(path, tmp_path / "cache")
    assert "too small" in str(error.value) and "model.block_size=128" in str(error.value)
    assert not (tmp_path / "cache").exists()


def test_fewer_merges_than_asked_sizes_the_model_from_the_real_vocabulary(tmp_path, corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="fragment_llm"):
        prepared = prepare(corpus, tmp_path / "cache", vocab_size=50_000)
    assert prepared.vocab_size < 50_000
    assert "fewer than model.vocab_size=50000" in caplog.text


def test_train_batches_walk_a_seeded_permutation_and_resume_by_position():
    tokens = np.arange(10_000, dtype=np.uint16)
    stream = TrainBatches(tokens, block_size=100, batch_size=8, seed=3, device=torch.device("cpu"))
    x, y = stream.next_batch()
    assert x.shape == y.shape == (8, 100) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y - x, torch.ones_like(x))
    starts = [x[:, 0]]
    for _ in range(stream.windows_per_epoch // 8 - 1):
        starts.append(stream.next_batch()[0][:, 0])
    first_epoch = torch.cat(starts)
    assert len(set(first_epoch.tolist())) == len(first_epoch)  # no window twice within an epoch

    resumed = TrainBatches(tokens, block_size=100, batch_size=8, seed=3, device=torch.device("cpu"))
    resumed.position = stream.position
    for _ in range(30):  # crosses into later epochs
        assert torch.equal(stream.next_batch()[0], resumed.next_batch()[0])

    other_seed = TrainBatches(tokens, block_size=100, batch_size=8, seed=4, device=torch.device("cpu"))
    assert not torch.equal(other_seed.next_batch()[0][:, 0], first_epoch[:8])


def test_eval_batches_are_fixed():
    tokens = np.arange(5000, dtype=np.uint16)
    first = [x for x, _ in eval_batches(tokens, 128, 4, 3, torch.device("cpu"))]
    second = [x for x, _ in eval_batches(tokens, 128, 4, 3, torch.device("cpu"))]
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, second))
