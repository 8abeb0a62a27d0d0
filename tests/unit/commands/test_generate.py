"""`fragment-llm generate` (commands/generate.py) on the tiny trained run and damaged copies of it: a tiny
temperature writes the greedy text; NaN weights, a damaged tokenizer or checkpoint and a prompt that is
not text are each one `error:` line and a non-zero exit."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import assert_one_error_line, call, copy_run


def test_generate_with_a_tiny_temperature_writes_the_greedy_text(trained_run, capsys):
    command = ["generate", trained_run, "--prompt", "The", "--max-new-tokens", "30", "--top-k", "100000"]
    greedy = call([*command, "--temperature", "0"], capsys)
    assert greedy[0] == 0 and len(greedy[1]) > len("The\n")
    assert call([*command, "--temperature", "1e-40", "--top-p", "1e-300"], capsys) == greedy


def test_a_model_with_nan_weights_is_one_error_line(trained_run, tmp_path, capsys):
    state = torch.load(trained_run / "models" / "final_model.pt", weights_only=True)
    state["model_state_dict"]["ln_f.weight"].fill_(torch.nan)
    torch.save(state, tmp_path / "nan.pt")
    code, _, err = call(["generate", trained_run, "--checkpoint", tmp_path / "nan.pt", "--prompt", "The"], capsys)
    assert_one_error_line(code, err, "logits are NaN")


TOKENIZER_DAMAGES = ["truncated", "not json", "json, not a tokenizer", "json list", "a directory", "no end of text"]


@pytest.mark.parametrize("kind", TOKENIZER_DAMAGES)
def test_a_damaged_tokenizer_is_one_error_line(kind, trained_run, tmp_path, capsys):
    from tokenizers import Tokenizer, models

    run = copy_run(trained_run, tmp_path)
    path = run / "tokenizer.json"
    text = path.read_text()
    path.unlink()
    contents = {
        "truncated": text[: len(text) // 2],
        "not json": "tokenizer",
        "json list": "[]",
        "json, not a tokenizer": '{"version": "1.0"}',
        "no end of text": Tokenizer(models.BPE()).to_str(),
    }
    if kind == "a directory":
        path.mkdir()
    else:
        path.write_text(contents[kind])
    code, _, err = call(["generate", run, "--prompt", "The"], capsys)
    assert_one_error_line(code, err, f"{path} is damaged or not a tokenizer: ")


def checkpoint_variants(state):
    config, weights = state["model_config"], state["model_state_dict"]
    return {
        "a list": [1, 2],
        "an empty dict": {},
        "no weights": {"model_config": config},
        "huge vocabulary": {**state, "model_config": {**config, "vocab_size": 2 * 10**9}},
        "vocabulary beyond its weights": {**state, "model_config": {**config, "vocab_size": 100_000}},
        "an unknown key": {**state, "model_config": {**config, "colour": "blue"}},
        "a text value": {**state, "model_config": {**config, "n_layer": "one"}},
        "a shape mismatch": {**state, "model_config": {**config, "vocab_size": 1024}},
        "a missing weight": {**state, "model_state_dict": {k: v for k, v in weights.items() if k != "ln_f.weight"}},
        "weights not tensors": {**state, "model_state_dict": {k: "x" for k in weights}},
    }


@pytest.mark.parametrize(
    "kind",
    ["a directory", "missing", "not a checkpoint", *checkpoint_variants({"model_config": {}, "model_state_dict": {}})],
)
def test_a_bad_checkpoint_is_one_error_line(kind, trained_run, tmp_path, capsys):
    state = torch.load(trained_run / "models" / "final_model.pt", weights_only=True)
    path = tmp_path / "checkpoint.pt"
    if kind == "a directory":
        path.mkdir()
    elif kind == "not a checkpoint":
        path.write_bytes(b"\x80\x04junk" * 100)
    elif kind != "missing":
        torch.save(checkpoint_variants(state)[kind], path)
    code, _, err = call(["generate", trained_run, "--checkpoint", path, "--prompt", "The"], capsys)
    assert_one_error_line(code, err, path)
    if kind == "a directory":
        assert "is a directory; pass a .pt file" in err


def test_a_prompt_that_is_not_text_is_one_error_line(trained_run, monkeypatch, capsys):
    code, _, err = call(["generate", trained_run, "--prompt", "\udcff"], capsys)  # a byte that is not UTF-8, from argv
    assert_one_error_line(code, err, "--prompt is not UTF-8 text")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe"), encoding="utf-8"))
    code, _, err = call(["generate", trained_run], capsys)
    assert_one_error_line(code, err, "standard input is not UTF-8 text")
