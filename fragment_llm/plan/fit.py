"""Fitting model=auto's law (law.py) to the sweeps in sweeps.json, the runs this toolkit made for it
(fragment_llm/plan/README.md): `python -m fragment_llm.plan.fit` prints the constants law.py holds, and
every run's prediction beside what it reached. A test refits them, so law.py cannot drift from its data."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from .law import LAW, Law
from .rules import least_squares

SWEEPS = Path(__file__).with_name("sweeps.json")


def load_runs(path: Path = SWEEPS) -> list[dict[str, Any]]:
    """The sweeps' runs: each its corpus (and whether it was held out of the fit), shape, tokens and the
    bits per byte it reached on the whole validation split."""
    return json.loads(path.read_text(encoding="utf-8"))["runs"]


def predicted(law: Law, run: dict[str, Any]) -> float:
    return law.bpb(
        run["block_params"], run["tokens"], run["train_tokens"], run["bytes_per_token"], run["compressibility"]
    )


ALPHAS = BETAS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # 0.05 .. 1.0
REPEATS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
LINEAR = ("e0", "e1", "a", "b")  # given the exponents and R, the law is linear in these


def fit(runs: list[dict[str, Any]]) -> Law:
    """The law's constants that minimise the squared relative error over the runs not held out: a grid
    over the exponents and R, and for each point least squares for the linear constants (none negative).
    Its `spread` is the largest relative error on the held-out runs (twice the fit's RMS when there are none)."""
    fitted_runs = [run for run in runs if not run["held_out"]]
    best: tuple[float, Law] = (math.inf, LAW)
    for alpha, beta, repeats in itertools.product(ALPHAS, BETAS, REPEATS):
        shape = Law(0, 0, 1, alpha, 1, beta, repeats, 0)
        rows = [_terms(shape, run) for run in fitted_runs]
        constants = _non_negative_fit(rows, fitted_runs)
        law = replace(shape, **dict(zip(LINEAR, constants)))
        error = sum(((predicted(law, run) - run["bpb"]) / run["bpb"]) ** 2 for run in fitted_runs)
        if error < best[0]:
            best = (error, law)
    law = Law(**{key: round(value, 4) for key, value in asdict(best[1]).items()})
    held_out = [abs(predicted(law, run) - run["bpb"]) / run["bpb"] for run in runs if run["held_out"]]
    rms = math.sqrt(best[0] / len(fitted_runs))
    return replace(law, spread=round(max(held_out) if held_out else 2 * rms, 3))


def _terms(shape: Law, run: dict[str, Any]) -> list[float]:
    """The four terms the linear constants multiply, for one run."""
    seen = shape.effective_tokens(run["tokens"], run["train_tokens"]) * run["bytes_per_token"]
    return [1.0, run["compressibility"], (run["block_params"] / 1e6) ** -shape.alpha, (seen / 1e6) ** -shape.beta]


def _non_negative_fit(rows: list[list[float]], runs: list[dict[str, Any]]) -> list[float]:
    """Least squares of the relative error; a negative constant is dropped (0) and the rest refitted."""
    used = list(range(len(LINEAR)))
    while True:
        weighted = [[row[i] / run["bpb"] for i in used] for row, run in zip(rows, runs)]
        values = least_squares(weighted, [1.0] * len(runs))
        if all(v >= 0 for v in values) or len(used) == 1:
            break
        used.pop(min(range(len(used)), key=lambda i: values[i]))
    constants = [0.0] * len(LINEAR)
    for index, value in zip(used, values):
        constants[index] = max(0.0, value)
    return constants


def main() -> None:
    runs = load_runs()
    law = fit(runs)
    print(law)
    for run in runs:
        guess = predicted(law, run)
        print(f"{run['name']:40s} reached {run['bpb']:.3f} predicted {guess:.3f} ({guess / run['bpb'] - 1:+.1%})")
    print("in law.py now:", LAW)


if __name__ == "__main__":
    main()
