"""A mixture of corpora (`data=mix`): the text its tokenizer trains on, at the sources' weights, and
its training windows, drawn from the sources by weight.

Each source is a corpus of its own (config/sources.py names it and makes its settings): its own split
and token cache entry (cache.py). Two things are the mixture's:

- The tokenizer trains on text of every source in proportion to its share, within a byte budget B:
  source i gives share_i x B bytes of its training split. B is the largest budget that repeats no
  source's text, min_i(train_bytes_i / share_i): the source that is smallest for its share gives all
  of its text, the others segments of about a KB (whole lines, or whole short documents) spread evenly
  over theirs. The trainer streams them, as it streams a single corpus, so memory is what a single
  corpus of B bytes takes.
- Training windows are drawn from the sources by weight, a deterministic function of (train.seed, the
  window's place in the stream): window g's source is a seeded draw at the shares, and the k-th window
  drawn from a source is the k-th of that source's own seeded order (batches.WindowOrder). The stream's
  one `position` therefore resumes it exactly, and ranks split it as they split a single corpus's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from ..config.sources import MixSource
from .batches import TrainBatches, WindowOrder, WindowStream
from .corpus import Progress, document_texts, total_bytes
from .document import Document

if TYPE_CHECKING:  # cache.py imports this module
    from .cache import PreparedData, SplitCorpus

# How a mixture's tokenizer text is chosen (weighted_texts): the key of its cached tokenizers holds it.
MIXTURE_VERSION = 1
MIX_KEY = 0x6D6978  # "mix": keeps a mixture's random numbers apart from a single corpus's (seed, epoch)
DRAW_CHUNK = 1 << 14  # windows whose sources are drawn at once
WHOLE = 1 - 1e-9  # a fraction of a source this close to 1 is all of it (size / share * share may round below)
SEGMENT = 1 << 10  # the tokenizer takes a larger source's text in segments of about this many characters


# ---- the tokenizer's text ----------------------------------------------------------------------------
def tokenizer_budget(train_bytes: Sequence[int], shares: Sequence[float]) -> float:
    """B: the most bytes the tokenizer can train on with every source at its share and none repeated."""
    return min(size / share for size, share in zip(train_bytes, shares))


def weighted_texts(
    splits: Sequence[tuple[list[Document], list[str], int]], shares: Sequence[float], progress: Progress
) -> Iterator[str]:
    """The text the tokenizer trains on: of each source's training split (its documents, their hashes,
    checked as they are read, and its bytes of text), segments spread evenly over it, about share x B
    bytes in all (see tokenizer_budget). Every piece is read, to check it, but only the segments chosen
    are kept."""
    budget = tokenizer_budget([size for _, _, size in splits], shares)
    for (documents, hashes, size), share in zip(splits, shares):
        fraction = budget * share / size
        owed = 0.0  # what the segments so far owe the budget: the next one is taken while it is owed any
        for text in document_texts(documents, progress, hashes):
            if text is None:
                continue
            if fraction >= WHOLE:  # the source that sets the budget gives all of its text
                yield text
                continue
            for segment in _segments(text):
                owed += fraction * len(segment)
                if owed > 0:
                    owed -= len(segment)
                    yield segment


def _segments(text: str) -> Iterator[str]:
    """`text` in segments of about SEGMENT characters, each cut after a line break (or at its end)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + SEGMENT) + 1 or len(text)
        yield text[start:end]
        start = end


def tokenizer_key(hashes: Sequence[str], shares: Sequence[float]) -> str:
    """What a mixture's tokenizer trains on, for its key in the cache: the sources' hashes and shares."""
    return f"mix{MIXTURE_VERSION}:" + ",".join(f"{corpus_hash}*{share!r}" for corpus_hash, share in zip(hashes, shares))


class TokenizerText:
    """What the tokenizer of a corpus trains on, a single corpus's training split or a mixture's text at
    its weights: its `key` in the cache, the words for the log (`what`), the bytes read (`size`) and the
    `texts`, each document checked against its hash as it is read."""

    def __init__(self, corpora: Sequence[SplitCorpus], sources: Sequence[MixSource], mixture: bool):
        self.corpora, self.shares, self.mixture = corpora, [source.share for source in sources], mixture
        train_bytes = [corpus.train_bytes for corpus in corpora]  # of text, which the budget shares out
        self.size = sum(train_bytes)
        self.read = sum(total_bytes(corpus.train) for corpus in corpora)  # of files, which progress counts
        if mixture:
            self.key = tokenizer_key([corpus.hash for corpus in corpora], self.shares)
            names = [source.name for source in sources]
            self.what = f"the mixture at its weights ({budget_line(names, train_bytes, self.shares)})"
        else:
            self.key, self.what = corpora[0].hash, "the training split"

    def texts(self) -> Iterator[str]:
        progress = Progress("Tokenizer: reading the training split", self.read)
        if self.mixture:
            yield from weighted_texts(
                [(corpus.train, corpus.train_hashes, corpus.train_bytes) for corpus in self.corpora],
                self.shares,
                progress,
            )
            return
        corpus = self.corpora[0]
        yield from (text for text in document_texts(corpus.train, progress, corpus.train_hashes) if text is not None)


def budget_line(names: Sequence[str], train_bytes: Sequence[int], shares: Sequence[float]) -> str:
    """What each source gives the tokenizer, for the log: `pydoc 418 KB (all), stdlib 418 KB of 9.8 MB`."""
    budget = tokenizer_budget(train_bytes, shares)
    parts = []
    for name, size, share in zip(names, train_bytes, shares):
        given = min(size, budget * share)
        parts.append(f"{name} {_size(given)} " + ("(all)" if given >= WHOLE * size else f"of {_size(size)}"))
    return ", ".join(parts)


def _size(size: float) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} KB"


# ---- the training windows ----------------------------------------------------------------------------
class MixtureBatches(WindowStream):
    """The training windows of a mixture: `sources` are (training tokens, share) pairs. Window g of the
    stream comes from the source a seeded draw at the shares gives it; the k-th window drawn from a
    source is place k of that source's WindowOrder. The draws are made DRAW_CHUNK at a time, and the
    windows each source had before a chunk are counted from the stream's start when first needed (on a
    resume, once), so a window depends on its place alone."""

    def __init__(
        self,
        sources: Sequence[tuple[np.ndarray, float]],
        block_size: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(batch_size, device, rank, world_size)
        self.seed = seed
        self.orders = [
            WindowOrder(tokens, block_size, (seed, MIX_KEY, index)) for index, (tokens, _) in enumerate(sources)
        ]
        self.bounds = np.cumsum([share for _, share in sources])[:-1]  # a draw u in [0, 1) picks a source by them
        self.dtype = np.result_type(*(tokens.dtype for tokens, _ in sources))
        self._chunk: tuple[int, np.ndarray, np.ndarray] = (-1, np.empty(0), np.empty(0))
        self._counted = (0, np.zeros(len(sources), dtype=np.int64))  # (chunk, each source's windows before it)

    def draws(self, chunk: int) -> np.ndarray:
        """The source of each window of `chunk`."""
        u = np.random.default_rng([self.seed, MIX_KEY, chunk]).random(DRAW_CHUNK)
        return np.searchsorted(self.bounds, u, side="right")

    def chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Each window of `chunk`: its source, and its place in that source's order."""
        if self._chunk[0] != chunk:
            counted, counts = self._counted
            if counted > chunk:  # an earlier chunk than counted: count again from the start
                counted, counts = 0, np.zeros_like(counts)
            for earlier in range(counted, chunk):
                counts = counts + np.bincount(self.draws(earlier), minlength=len(counts))
            sources = self.draws(chunk)
            places = np.empty(DRAW_CHUNK, dtype=np.int64)
            for source in range(len(counts)):
                drawn = sources == source
                places[drawn] = counts[source] + np.arange(np.count_nonzero(drawn))
            self._counted = (chunk + 1, counts + np.bincount(sources, minlength=len(counts)))
            self._chunk = (chunk, sources, places)
        return self._chunk[1], self._chunk[2]

    def windows(self, indices: np.ndarray) -> np.ndarray:
        sources, places = np.empty_like(indices), np.empty_like(indices)
        chunks, within = np.divmod(indices, DRAW_CHUNK)
        for chunk in np.unique(chunks):
            chosen = chunks == chunk
            chunk_sources, chunk_places = self.chunk(int(chunk))
            sources[chosen], places[chosen] = chunk_sources[within[chosen]], chunk_places[within[chosen]]
        rows = np.empty((len(indices), self.orders[0].block_size + 1), dtype=self.dtype)
        for source in np.unique(sources):
            drawn = sources == source
            rows[drawn] = self.orders[source].windows(places[drawn])
        return rows


def training_batches(
    data: PreparedData,
    block_size: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> WindowStream:
    """The training stream of the prepared data: a single corpus's TrainBatches, a mixture's, or the rows
    of conversations (chat_data.ChatData's own)."""
    if hasattr(data, "train_batches"):
        return data.train_batches(block_size, batch_size, seed, device, rank, world_size)
    if not data.mixture:
        return TrainBatches(data.train, block_size, batch_size, seed, device, rank, world_size)
    sources = [(source.train, source.share) for source in data.sources]
    return MixtureBatches(sources, block_size, batch_size, seed, device, rank, world_size)
