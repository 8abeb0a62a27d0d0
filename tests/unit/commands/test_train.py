"""`fragment-llm train` (commands/train.py): every argument goes to the training app."""

from __future__ import annotations

import sys
import types

import pytest


@pytest.mark.slow
def test_fragment_llm_train_hands_every_argument_to_the_training_app(monkeypatch):
    from fragment_llm.commands.main import main

    given = []
    app = types.ModuleType("fragment_llm.launch.hydra_app")  # importing the real one sets signal handlers
    app.main = given.append
    monkeypatch.setitem(sys.modules, app.__name__, app)
    arguments = ["-m", "--cfg", "job", "-h", "--help", "model=small", "+model.x=1", "--", "-c"]
    assert main(["train", *arguments]) == 0
    assert main(["train"]) == 0
    assert given == [arguments, []]
