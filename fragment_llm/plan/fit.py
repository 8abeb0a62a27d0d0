"""Fitting model=auto's law (law.py) to the sweeps in sweeps.json, the runs this toolkit made for it
(fragment_llm/plan/README.md): `python -m fragment_llm.plan.fit` prints the constants law.py holds, and
every run's prediction beside what it reached. A test refits them, so law.py cannot drift from its data."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
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
    return law.bpb(run["block_params"], run["tokens"], run["train_tokens"], run["bytes_per_token"], run["bigram_bpb"])


ALPHAS = BETAS = (0.01, 0.02, 0.03, *(round(0.05 * i, 2) for i in range(1, 21)))  # 0.01 .. 1.0
REPEATS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def fit(runs: list[dict[str, Any]]) -> Law:
    """The law's constants, in two steps. First the shape of the law (A, alpha, B, beta, R), with an offset
    of each corpus's own: a grid over the exponents and R, and for each point least squares of the
    relative error for the offsets, A and B. Then the offset of a corpus not seen, from its bigram bits
    per byte: a line through the fitted corpora's offsets. Its `spread` is the largest relative error of
    the whole law (that line included) on the held-out runs, or on the fitted ones when none is held out."""
    fitted_runs = [run for run in runs if not run["held_out"]]
    corpora = sorted({run["corpus"] for run in fitted_runs})
    best: tuple[float, Any] = (math.inf, None)
    for alpha, beta, repeats in itertools.product(ALPHAS, BETAS, REPEATS):
        shape = Law(0, 0, 1, alpha, 1, beta, repeats, 0)
        rows = [_terms(shape, run, corpora) for run in fitted_runs]
        constants = least_squares(
            [[t / run["bpb"] for t in row] for row, run in zip(rows, fitted_runs)], [1.0] * len(rows)
        )
        error = sum(
            (sum(c * t for c, t in zip(constants, row)) / run["bpb"] - 1) ** 2 for row, run in zip(rows, fitted_runs)
        )
        if error < best[0]:
            best = (error, (alpha, beta, repeats, constants))
    error, (alpha, beta, repeats, constants) = best
    offsets = dict(zip(corpora, constants[: len(corpora)]))
    difficulty = {run["corpus"]: run["bigram_bpb"] for run in fitted_runs}
    e1, e0 = _line([difficulty[name] for name in corpora], [offsets[name] for name in corpora])
    law = Law(
        e0=round(e0, 4),
        e1=round(e1, 4),
        a=round(constants[-2], 4),
        alpha=alpha,
        b=round(constants[-1], 4),
        beta=beta,
        repeats=repeats,
        spread=0.0,
    )
    held_out = [run for run in runs if run["held_out"]] or fitted_runs
    spread = max(abs(predicted(law, run) - run["bpb"]) / run["bpb"] for run in held_out)
    return replace(law, spread=round(spread, 3))


def _terms(shape: Law, run: dict[str, Any], corpora: list[str]) -> list[float]:
    """What the linear constants multiply, for one run: its corpus's offset (one of them), A and B."""
    seen = shape.effective_tokens(run["tokens"], run["train_tokens"]) * run["bytes_per_token"]
    own = [1.0 if run["corpus"] == name else 0.0 for name in corpora]
    return [*own, (run["block_params"] / 1e6) ** -shape.alpha, (seen / 1e6) ** -shape.beta]


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Slope and intercept of the least-squares line through the points."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread_x = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread_x if spread_x else 0.0
    return slope, mean_y - slope * mean_x


def table(law: Law, runs: list[dict[str, Any]]) -> list[str]:
    """The runs as a markdown table: each its shape, steps, epochs, and what it reached beside the prediction."""
    rows = [
        "| corpus | budget | layers x width | vocabulary | steps | epochs | reached | predicted | error |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in sorted(runs, key=lambda r: (r["held_out"], r["corpus"], r["budget_s"], r["bpb"])):
        guess = predicted(law, run)
        corpus = f"{run['corpus']}{' (held out)' if run['held_out'] else ''}"
        rows.append(
            f"| {corpus} | {run['budget_s'] // 60} min | {run['n_layer']} x {run['n_embd']} | {run['vocab_size']} | "
            f"{run['steps']:,} | {run['epochs']:.1f} | {run['bpb']:.3f} | {guess:.3f} | {guess / run['bpb'] - 1:+.1%} |"
        )
    return rows


def main() -> None:
    runs = load_runs()
    law = fit(runs)
    print(law)
    print("in law.py now:", LAW)
    print("\n".join(table(law, runs)))


if __name__ == "__main__":
    main()
