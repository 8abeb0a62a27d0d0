"""A mixture of corpora (data/mixture.py): the text its tokenizer trains on, at the sources' weights in a
budget that repeats no source, and its training windows, drawn by weight as a function of the seed and
the window's place in the stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fragment_llm.config.schema import ConfigError
from fragment_llm.data.corpus import Progress, check_documents
from fragment_llm.data.document import Document
from fragment_llm.data.mixture import DRAW_CHUNK, MixtureBatches, tokenizer_budget, weighted_texts

CPU = torch.device("cpu")


def documents(label: str, count: int, size: int) -> list[Document]:
    """`count` in-memory documents of `size` bytes, of lines `LABEL NNNNNNN` that say their source and where
    in it they start (12-byte lines)."""
    made = []
    for index in range(count):
        start = index * size
        content = "".join(f"{label[:4]} {start + offset:07d}\n" for offset in range(0, size, 13)).encode()
        made.append(Document(f"{label}{index}", len(content), content=content))
    return made


@pytest.mark.parametrize("large_documents", [1, 200], ids=["one large file", "many small documents"])
def test_the_tokenizer_text_holds_each_source_at_its_share_and_repeats_none(large_documents):
    small, large = documents("small", 10, 1000), documents("large", large_documents, 200_000 // large_documents)
    sizes = [sum(document.size for document in split) for split in (small, large)]
    shares = (0.25, 0.75)
    budget = tokenizer_budget(sizes, shares)
    assert budget == sizes[0] / 0.25  # the small source, a quarter of the budget, gives all of its text
    splits = [(split, check_documents(split).hashes, size) for split, size in zip((small, large), sizes)]
    lines = "".join(weighted_texts(splits, shares, Progress("test", sum(sizes)))).splitlines()
    taken = {label: [int(line.split()[1]) for line in lines if line.startswith(label)] for label in ("smal", "larg")}
    assert len(taken["smal"]) * 13 == sizes[0]  # every line of the limiting source, once
    assert len(taken["larg"]) * 13 == pytest.approx(0.75 * budget, abs=2000)  # its share, within a segment
    assert len(set(taken["larg"])) == len(taken["larg"])  # none twice
    assert min(taken["larg"]) < 2000 and max(taken["larg"]) > 190_000  # spread over all of it, not its start


def test_a_changed_document_stops_the_tokenizer_text():
    docs = documents("doc", 3, 100)
    with pytest.raises(ConfigError, match="^data: doc0 changed while it was being read"):
        list(weighted_texts([(docs, ["0" * 32] * 3, 300)], (1.0,), Progress("test", 300)))


def mixture(shares, seed=7, batch_size=8, rank=0, world_size=1, sizes=(5000, 3000, 2000)):
    """A stream over three sources whose tokens say which source they are (1000s, 2000s, 3000s)."""
    sources = [
        (np.arange(size, dtype=np.uint16) % 1000 + 1000 * (index + 1), share)
        for index, (size, share) in enumerate(zip(sizes, shares))
    ]
    return MixtureBatches(sources, 16, batch_size, seed, CPU, rank, world_size)


def sources_of(windows: torch.Tensor) -> np.ndarray:
    return (windows[:, 0].numpy() // 1000) - 1


def test_windows_are_drawn_by_weight():
    stream = mixture((0.6, 0.3, 0.1), batch_size=64)
    drawn = np.concatenate([sources_of(stream.next_batch()[0]) for _ in range(500)])  # 32,000 windows
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert shares == pytest.approx([0.6, 0.3, 0.1], abs=0.015)  # 5 standard deviations of 32,000 draws
    again = mixture((0.6, 0.3, 0.1), batch_size=64)
    assert torch.equal(again.next_batch()[0], mixture((0.6, 0.3, 0.1), batch_size=64).next_batch()[0])
    other_seed = mixture((0.6, 0.3, 0.1), seed=8, batch_size=64)
    assert not torch.equal(other_seed.next_batch()[0], mixture((0.6, 0.3, 0.1), batch_size=64).next_batch()[0])


def test_each_source_is_read_in_its_own_seeded_order_without_repeats_within_its_epoch():
    stream = mixture((0.5, 0.3, 0.2))
    windows = torch.cat([stream.next_batch()[0] for _ in range(60)])
    x, y = windows[:, :-1], windows[:, 1:]
    assert torch.equal(x[:, 1:], y[:, :-1])  # windows of consecutive tokens
    first = windows[sources_of(windows) == 2][:, 0].tolist()[: (2000 - 1) // 16]
    assert len(set(first)) == len(first)  # the third source's first epoch: no window twice


def test_a_resumed_stream_continues_exactly_across_chunks_of_draws():
    stream = mixture((0.5, 0.3, 0.2), batch_size=100)
    for _ in range(DRAW_CHUNK // 100 - 2):
        stream.next_batch()
    resumed = mixture((0.5, 0.3, 0.2), batch_size=100)
    resumed.position = stream.position  # all a checkpoint keeps of the stream
    for _ in range(5):  # across the first chunk's end
        assert torch.equal(stream.next_batch()[0], resumed.next_batch()[0])


def test_ranks_split_the_stream_as_one_process_with_their_batch_reads_it():
    whole = mixture((0.5, 0.3, 0.2), batch_size=8)
    ranks = [mixture((0.5, 0.3, 0.2), batch_size=4, rank=rank, world_size=2) for rank in range(2)]
    for _ in range(10):
        parts = torch.cat([rank.next_batch()[0] for rank in ranks])
        assert torch.equal(whole.next_batch()[0], parts)
    assert whole.position == ranks[0].position == ranks[1].position == 80
