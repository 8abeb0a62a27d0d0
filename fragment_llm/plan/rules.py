"""The rules `model=auto` chooses by, fitted to sweeps run with this toolkit (fragment_llm/plan/README.md):
how fast a machine trains a shape (`Speed`, measured per machine), what bits per byte a shape reaches
after so many tokens of a corpus (`predicted_bpb`, the fitted law), and the choice itself (`choose`):
among the shapes a machine can train, the one the law predicts best for the time.

Pure arithmetic: the machine's speed and the corpus's figures come in as numbers, so that the rules
are tested on fixed inputs and `fragment-llm plan` shows exactly what a run would do."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

from ..text import plural
from .law import LAW, Law

HEAD_SIZE = 32  # the head size of the shapes swept; wider models (over 256) use 64
WIDTHS = (64, 96, 128, 192, 256, 384, 512, 768, 1024)
# From two layers, the sweeps' shallowest: the law sees block weights, not depth, and chose 1 x 256 for the
# bundled corpus at 5 minutes on two threads, which reached 1.861 bits per byte where 4 x 128 reached 1.583.
DEPTHS = (2, 3, 4, 6, 8, 12)
VOCABULARIES = (512, 1024, 2048, 4096, 8192)
# The law holds where the sweeps trained: auto chooses no model of more block weights than twice the
# largest they trained (4 x 192, 1.8M), where it would extrapolate (a key the user sets may go beyond).
MAX_BLOCK_PARAMS, MAX_WIDTH = 3_600_000, 256  # and no wider than the sweeps' 192 by more than a step
# Nor more block weights than 2 per byte of training text: on the bundled corpus (0.43 MB) 4 x 128 (1.8 a
# byte) was the best of its 5-minute runs and model=auto's 4 x 192 (4.1 a byte) worse, and the law, whose
# repeated epochs only stop helping, does not see a large model over-fit a small corpus.
MAX_WEIGHTS_PER_BYTE = 2
TOKENS_PER_STEP = 1024  # 8 sequences of 128: many small steps learn most per minute (conf/README.md)
# AdamW's weight decay by the epochs a run makes: strong decay (1.0, the default, tuned at 8 epochs on the
# bundled corpus) curbs the over-fitting of many passes over a small corpus and holds back a run that sees
# its text a few times. At 5 minutes, 0.1 beat 1.0 by 3.0% at 2.5 epochs (help) and 2.0% at 3 (plays),
# by 0.5% at 6.3 and tied at 4.6 (halves of plays), and lost by 5.3% at 21 (the bundled corpus).
LIGHT_DECAY, STRONG_DECAY, STRONG_DECAY_EPOCHS = 0.1, 1.0, 8


def weight_decay_for(epochs: float) -> float:
    """The weight decay for a run of `epochs` passes over its corpus."""
    return STRONG_DECAY if epochs >= STRONG_DECAY_EPOCHS else LIGHT_DECAY


EVALUATION_SHARE = (
    0.04  # of a budget (it counts the loop's evaluations: 160 windows every 200 steps, and each epoch's end)
)


@dataclass(frozen=True)
class Shape:
    """What auto chooses of a model and its batch."""

    n_layer: int
    n_embd: int
    n_head: int
    block_size: int
    vocab_size: int
    batch_size: int

    @property
    def block_params(self) -> int:
        """The transformer blocks' weights: attention's four and the MLP's two 4x matrices, per layer."""
        return 12 * self.n_layer * self.n_embd**2

    @property
    def params(self) -> int:
        """All weights of the modern layout: the blocks, the (tied) token embedding and a value
        embedding on every other layer."""
        return self.block_params + (1 + (self.n_layer + 1) // 2) * self.vocab_size * self.n_embd

    @property
    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per weight that multiplies (the blocks and the head), and attention's."""
        return (
            6 * (self.block_params + self.vocab_size * self.n_embd) + 12 * self.n_layer * self.block_size * self.n_embd
        )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    def describe(self) -> str:
        return (
            f"{plural(self.n_layer, 'layer')}, {plural(self.n_head, 'head')}, {self.n_embd} wide, "
            f"block {self.block_size}, "
            f"vocab {self.vocab_size}, batch {self.batch_size}"
        )


@dataclass(frozen=True)
class Speed:
    """Seconds per optimizer step of a shape on one machine: fixed + per layer + per FLOP, fitted to timed steps."""

    fixed: float
    per_layer: float
    per_flop: float

    def seconds_per_step(self, shape: Shape) -> float:
        flops = shape.flops_per_token * shape.tokens_per_step
        return self.fixed + self.per_layer * shape.n_layer + self.per_flop * flops

    @classmethod
    def fitted(cls, timed: list[tuple[Shape, float]]) -> "Speed":
        """Least squares of the relative error through the timed steps, no term negative (a negative one is
        dropped and the rest refitted)."""
        terms = [0, 1, 2]
        while True:
            coefficients = least_squares(
                [[_features(shape)[t] / seconds for t in terms] for shape, seconds in timed], [1.0 for _ in timed]
            )
            if all(c >= 0 for c in coefficients) or len(terms) == 1:
                break
            terms.pop(min(range(len(terms)), key=lambda i: coefficients[i]))
        full = [0.0, 0.0, 0.0]
        for term, value in zip(terms, coefficients):
            full[term] = max(0.0, value)
        return cls(*full)


def _features(shape: Shape) -> tuple[float, float, float]:
    return 1.0, float(shape.n_layer), shape.flops_per_token * shape.tokens_per_step


def least_squares(rows: list[list[float]], values: list[float]) -> list[float]:
    """The normal equations, solved by Gauss-Jordan elimination (a handful of rows and at most three columns)."""
    size = len(rows[0])
    scale = [max(abs(row[j]) for row in rows) or 1.0 for j in range(size)]
    scaled = [[row[j] / scale[j] for j in range(size)] for row in rows]
    matrix = [
        [sum(r[i] * r[j] for r in scaled) for j in range(size)] + [sum(r[i] * v for r, v in zip(scaled, values))]
        for i in range(size)
    ]
    for column in range(size):
        pivot = max(range(column, size), key=lambda r: abs(matrix[r][column]))
        matrix[column], matrix[pivot] = matrix[pivot], matrix[column]
        if abs(matrix[column][column]) < 1e-300:
            return [0.0] * size
        for row in range(size):
            if row != column:
                factor = matrix[row][column] / matrix[column][column]
                matrix[row] = [a - factor * b for a, b in zip(matrix[row], matrix[column])]
    return [matrix[i][size] / matrix[i][i] / scale[i] for i in range(size)]


@dataclass(frozen=True)
class Corpus:
    """What the rules know of a corpus: its training text in bytes and in tokens, and how hard it is."""

    train_bytes: int
    train_tokens: int
    bigram_bpb: float  # a bigram model's bits per byte on the start of its training text (how hard it is)

    @property
    def bytes_per_token(self) -> float:
        return self.train_bytes / max(1, self.train_tokens)


@dataclass(frozen=True)
class Outcome:
    """What a shape does in a run of `seconds` on a machine, and the bits per byte the law predicts."""

    shape: Shape
    seconds: float
    steps: int
    tokens: int
    epochs: float
    bpb: float
    low: float
    high: float


def outcome(
    shape: Shape, speed: Speed, seconds: float, corpus: Corpus, law: Law = LAW, steps: Optional[int] = None
) -> Outcome:
    """The run of `shape`: `steps` if given (a step-counted run), else as many as `seconds` allow."""
    per_step = speed.seconds_per_step(shape)
    if steps is None:
        steps = max(0, int(seconds * (1 - EVALUATION_SHARE) / per_step))
    tokens = steps * shape.tokens_per_step
    bpb = law.bpb(shape.block_params, tokens, corpus.train_tokens, corpus.bytes_per_token, corpus.bigram_bpb)
    return Outcome(
        shape,
        steps * per_step / (1 - EVALUATION_SHARE),
        steps,
        tokens,
        tokens / max(1, corpus.train_tokens),
        bpb,
        bpb * (1 - law.spread),
        bpb * (1 + law.spread),
    )


def heads_for(width: int) -> int:
    """Heads of about HEAD_SIZE wide (64 past 256 wide), each of an even size as rotary positions need;
    1 when the width has no such split."""
    target = HEAD_SIZE if width <= 256 else 64
    splits = [heads for heads in range(1, width + 1) if width % heads == 0 and (width // heads) % 2 == 0]
    return min(splits, key=lambda heads: (abs(math.log(width / heads / target)), heads)) if splits else 1


def candidates(fixed: dict[str, int], vocab_size: int, train_bytes: float = math.inf) -> Iterable[Shape]:
    """Every shape auto may choose for `train_bytes` of training text, keeping the keys the user set (`fixed`:
    model.* and train.batch_size names): within the limits above (the smallest shape always, however small
    the corpus), or of any size when the user set the depth or the width."""
    smallest = 12 * min(DEPTHS) * min(WIDTHS) ** 2
    most = min(MAX_BLOCK_PARAMS, max(MAX_WEIGHTS_PER_BYTE * train_bytes, smallest))
    widths = [fixed["n_embd"]] if "n_embd" in fixed else WIDTHS
    depths = [fixed["n_layer"]] if "n_layer" in fixed else DEPTHS
    block = fixed.get("block_size", 128)
    batch = fixed.get("batch_size", max(1, TOKENS_PER_STEP // block))
    for width in widths:
        heads = fixed.get("n_head", heads_for(width))
        if width % heads or (width // heads) % 2:
            continue  # rotary positions need an even head size
        for depth in depths:
            shape = Shape(depth, width, heads, block, vocab_size, batch)
            within = shape.block_params <= most and width <= MAX_WIDTH
            if within or "n_layer" in fixed or "n_embd" in fixed:
                yield shape


def choose(fixed: dict[str, int], corpora: dict[int, Corpus], speed: Speed, seconds: float, law: Law = LAW) -> Outcome:
    """The candidate the law predicts best for `seconds` on this machine, over the vocabularies in
    `corpora` (each with the corpus as that vocabulary tokenizes it); at least one step of it must fit."""
    outcomes = [
        outcome(shape, speed, seconds, corpus, law)
        for vocab_size, corpus in corpora.items()
        for shape in candidates(fixed, vocab_size, corpus.train_bytes)
    ]
    possible = [o for o in outcomes if o.steps >= 1]
    if not possible:
        raise ValueError("no candidate shape fits one step")
    return min(possible, key=lambda o: o.bpb)
