"""Crash-safe writing (files.py): what is written atomically gets the usual file mode."""

from __future__ import annotations

import torch

from fragment_llm.files import FILE_MODE, atomic_path, write_json
from fragment_llm.train.checkpoint import save_checkpoint


def test_atomically_written_files_get_the_usual_mode(tmp_path):
    from safetensors.torch import save_file

    with atomic_path(tmp_path / "model.safetensors") as temporary:
        save_file({"w": torch.zeros(2)}, str(temporary))  # safetensors itself writes 0600
    write_json(tmp_path / "summary.json", {})
    save_checkpoint(tmp_path / "step_1.pt", {"step": 1})
    for name in ("model.safetensors", "summary.json", "step_1.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == FILE_MODE, name
