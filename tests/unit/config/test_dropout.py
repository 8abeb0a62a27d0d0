"""The dropout a run gets by the epochs it makes (config/dropout.py, `model.dropout=null`)."""

from __future__ import annotations

import pytest

from fragment_llm.config.dropout import dropout_for_epochs


@pytest.mark.parametrize(
    "epochs, dropout", [(1, 0.0), (11.9, 0.0), (12, 0.1), (23.9, 0.1), (24, 0.2), (48, 0.3), (1000, 0.3)]
)
def test_dropout_grows_with_the_epochs_from_twelve(epochs, dropout):
    assert dropout_for_epochs(epochs) == dropout
