"""Export a trained model: a Hugging Face GPT-2 folder, or bare safetensors weights with our config.

Every file is written to a temporary name and renamed (`files.atomic_path`): an interrupted export
never leaves a half-written file under a final name, and a new export replaces an old one file by file.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model
from tokenizers import Tokenizer

from .files import atomic_path, write_json
from .model import GPT
from .runs import TOKENIZER_FILE
from .tokenizer import END_OF_TEXT

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under transformers' GPT2LMHeadModel names.

    GPT-2 keeps its linear layers as Conv1D, whose weight is the transpose of nn.Linear's; it always
    has biases, so a model trained without them gets zeros, which compute the same. The embedding
    is cut to the real vocabulary (padded rows are no tokens) and serves as the tied lm_head.
    """
    config = model.config
    weights = {name: parameter.detach() for name, parameter in model.state_dict().items()}

    def bias(name: str, size: int) -> torch.Tensor:
        return weights.get(name, torch.zeros(size))

    def layer_norm(ours: str, theirs: str) -> dict[str, torch.Tensor]:
        return {f"{theirs}.weight": weights[f"{ours}.weight"], f"{theirs}.bias": bias(f"{ours}.bias", config.n_embd)}

    def linear(ours: str, theirs: str) -> dict[str, torch.Tensor]:
        weight = weights[f"{ours}.weight"]
        return {f"{theirs}.weight": weight.t(), f"{theirs}.bias": bias(f"{ours}.bias", weight.size(0))}

    exported = {
        "transformer.wte.weight": weights["wte.weight"][: config.vocab_size],
        "transformer.wpe.weight": weights["wpe.weight"],
        **layer_norm("ln_f", "transformer.ln_f"),
    }
    for layer in range(config.n_layer):
        ours, theirs = f"blocks.{layer}", f"transformer.h.{layer}"
        exported.update(layer_norm(f"{ours}.ln_1", f"{theirs}.ln_1"))
        exported.update(layer_norm(f"{ours}.ln_2", f"{theirs}.ln_2"))
        exported.update(linear(f"{ours}.attn.qkv", f"{theirs}.attn.c_attn"))
        exported.update(linear(f"{ours}.attn.proj", f"{theirs}.attn.c_proj"))
        exported.update(linear(f"{ours}.mlp.fc", f"{theirs}.mlp.c_fc"))
        exported.update(linear(f"{ours}.mlp.proj", f"{theirs}.mlp.c_proj"))
    return {name: tensor.float().contiguous() for name, tensor in exported.items()}


def gpt2_config(model: GPT, end_of_text: int) -> dict:
    """config.json for transformers' GPT2LMHeadModel: "gelu" is the exact GELU we use."""
    config = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": 4 * config.n_embd,
        "activation_function": "gelu",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
        "torch_dtype": "float32",
    }


def copy_tokenizer(tokenizer_path: Path, out: Path) -> None:
    with atomic_path(out / TOKENIZER_FILE) as temporary:
        shutil.copyfile(tokenizer_path, temporary)


def export_hf(model: GPT, tokenizer: Tokenizer, tokenizer_path: Path, out: Path) -> None:
    """A folder that `transformers.AutoModelForCausalLM.from_pretrained(out)` and `AutoTokenizer` load."""
    end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    with atomic_path(out / WEIGHTS_FILE) as temporary:
        save_file(gpt2_state_dict(model), str(temporary), metadata={"format": "pt"})
    write_json(out / CONFIG_FILE, gpt2_config(model, end_of_text))
    copy_tokenizer(tokenizer_path, out)
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": END_OF_TEXT,
            "eos_token": END_OF_TEXT,
            "unk_token": END_OF_TEXT,
            "model_max_length": model.config.block_size,
            "add_prefix_space": False,
        },
    )


def export_safetensors(model: GPT, tokenizer_path: Path, out: Path) -> None:
    """Our own layout: model.safetensors (safetensors.torch.load_model loads it into a GPT built from
    config.json, which holds GPTConfig's arguments) and the tokenizer."""
    with atomic_path(out / WEIGHTS_FILE) as temporary:
        save_model(model, str(temporary), metadata={"format": "pt"})
    write_json(out / CONFIG_FILE, asdict(model.config))
    copy_tokenizer(tokenizer_path, out)
