"""Export: a Hugging Face GPT-2 folder that transformers loads with our logits, and bare safetensors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_model

from conftest import train_tiny_run
from fragment_llm.cli import main
from fragment_llm.export import export_hf, export_safetensors
from fragment_llm.model import GPT, GPTConfig
from fragment_llm.runs import load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus):
    # vocab 500: the embedding has 12 padding rows, which the export leaves out.
    return train_tiny_run(tmp_path_factory.mktemp("trained"), corpus, **{"model.vocab_size": 500})


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    with torch.no_grad():
        return model(ids).logits


def test_transformers_loads_the_hf_export_with_our_logits_and_tokenizer(run_dir, tmp_path):
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        path.name for path in out.iterdir()
    }
    trained = load_run(run_dir)
    text = "The import statement is executed in two steps."
    ids = trained.tokenizer.encode(text, add_special_tokens=False).ids
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tokenizer(text)["input_ids"] == ids
    assert tokenizer.decode(ids) == text
    with torch.no_grad():
        ours, _ = trained.model(torch.tensor([ids]))
    theirs = hf_logits(out, torch.tensor([ids]))
    vocab = trained.config.vocab_size
    assert theirs.shape == (1, len(ids), vocab)
    torch.testing.assert_close(theirs, ours[..., :vocab], atol=1e-4, rtol=1e-4)


def test_a_model_with_biases_exports_them(run_dir, tmp_path):
    trained = load_run(run_dir)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**vars(trained.config), "bias": True, "n_layer": 2})).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)
    export_hf(model, trained.tokenizer, trained.tokenizer_path, tmp_path)
    ids = torch.randint(0, trained.config.vocab_size, (2, 40))
    with torch.no_grad():
        ours, _ = model(ids)
    torch.testing.assert_close(hf_logits(tmp_path, ids), ours[..., : trained.config.vocab_size], atol=1e-4, rtol=1e-4)


def test_the_safetensors_export_rebuilds_the_same_model(run_dir, tmp_path):
    trained = load_run(run_dir)
    export_safetensors(trained.model, trained.tokenizer_path, tmp_path)
    model = GPT(GPTConfig(**json.loads((tmp_path / "config.json").read_text())))
    load_model(model, str(tmp_path / "model.safetensors"))
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert model.lm_head.weight is model.wte.weight
    assert (tmp_path / "tokenizer.json").read_text() == (run_dir / "tokenizer.json").read_text()
