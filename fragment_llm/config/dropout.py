"""Regularisation by epochs: the dropout a run gets when `model.dropout` is null (the default of model=tiny)."""

from __future__ import annotations

import math

# Regularisation by epochs (model.dropout=null, the default). A run of few passes over its text trains
# best without dropout: weight decay holds it, and its steps are cheaper (dropout on attention's
# probabilities turns off the fused kernel: a third more per step on a CPU). From DROPOUT_EPOCHS passes on,
# the model over-fits without it: dropout DROPOUT_STEP, and DROPOUT_STEP more each time the epochs
# double, up to DROPOUT_MAX. Measured on the bundled corpus (conf/README.md, "Regularisation by epochs").
DROPOUT_EPOCHS = 12
DROPOUT_STEP = 0.1
DROPOUT_MAX = 0.3
# A time-budgeted run measures its pace before it chooses: after this share of the budget (and at least
# DROPOUT_PACE_STEPS steps), it projects the epochs the budget allows.
DROPOUT_PACE_SHARE = 0.1
DROPOUT_PACE_STEPS = 10


def dropout_for_epochs(epochs: float) -> float:
    """The dropout a run of `epochs` passes over its text gets when model.dropout is null."""
    if epochs < DROPOUT_EPOCHS:
        return 0.0
    doublings = math.floor(math.log2(epochs / DROPOUT_EPOCHS))
    return round(min(DROPOUT_MAX, DROPOUT_STEP * (1 + doublings)), 2)


DROPOUT_HELP = (
    f"dropout probability; null: chosen by the epochs the run makes (none below {DROPOUT_EPOCHS}, then "
    f"{DROPOUT_STEP}, and {DROPOUT_STEP} more each time they double, at most {DROPOUT_MAX}; on a time budget, "
    f"projected from its pace over the first {DROPOUT_PACE_SHARE:.0%} of it)"
)
