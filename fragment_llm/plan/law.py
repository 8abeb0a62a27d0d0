"""The fitted law: validation bits per byte after training a model of N block weights on D tokens of a
corpus of U tokens, each of b bytes. Its form is a Chinchilla-style sum, in bytes, with repeated epochs
worth less than new text (Muennighoff et al.'s decay):

    bpb = E + A (N / 1e6)^-alpha + B (D' b / 1e6)^-beta
    D'  = D                                    while D <= U (one epoch or less)
          U (1 + R (1 - exp(-(D / U - 1) / R)))  after (each epoch past the first is worth less)
    E   = E0 + E1 z                            z: a bigram model's bits per byte on its first 500 KB

`fit.py` fits the constants to the sweeps in sweeps.json (`python -m fragment_llm.plan.fit` prints them);
a test refits them, so the numbers here are the data's. Pure arithmetic, no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Law:
    e0: float
    e1: float
    a: float
    alpha: float
    b: float
    beta: float
    repeats: float  # R: how many epochs' worth new text the repeats add at most
    spread: float  # the relative error that holds on the corpora held out of the fit (a range of +- this)

    def offset(self, bigram_bpb: float) -> float:
        return self.e0 + self.e1 * bigram_bpb

    def effective_tokens(self, tokens: float, unique: float) -> float:
        if tokens <= unique:
            return tokens
        return unique * (1 + self.repeats * (1 - math.exp(-(tokens / unique - 1) / self.repeats)))

    def bpb(
        self, block_params: float, tokens: float, unique: float, bytes_per_token: float, bigram_bpb: float
    ) -> float:
        seen = self.effective_tokens(tokens, unique) * bytes_per_token
        return (
            self.offset(bigram_bpb)
            + self.a * (max(block_params, 1.0) / 1e6) ** -self.alpha
            + self.b * (max(seen, 1.0) / 1e6) ** -self.beta
        )


LAW = Law(e0=-0.39, e1=0.6597, a=0.4659, alpha=0.15, b=0.8586, beta=0.55, repeats=4.0, spread=0.179)


@dataclass(frozen=True)
class Trusted:
    """The region the sweeps covered: a plan outside it says so in one line."""

    min_seconds: float
    max_seconds: float
    min_bytes: float
    max_bytes: float
    max_width: int
    device: str

    def describe(self) -> str:
        return (
            f"{self.device}, {self.min_seconds / 60:g}-{self.max_seconds / 60:g} minutes, "
            f"{self.min_bytes / 1e6:g}-{self.max_bytes / 1e6:g} MB, at most {self.max_width} wide"
        )


TRUSTED = Trusted(min_seconds=60, max_seconds=1200, min_bytes=4e5, max_bytes=1.2e7, max_width=256, device="cpu")
