"""Export a trained model: a Hugging Face folder, or bare safetensors weights with our config.

The Hugging Face folder is written as the transformers architecture that computes exactly what our
layout computes (`hf_architecture`): GPT-2 (learned positions, LayerNorm, GELU or ReLU squared), Llama
(rotary positions, RMSNorm, SwiGLU) or Qwen3 (Llama's layout with QK-norm). Any other layout gets our
own model code beside its weights (`hf_remote`), which transformers runs with `trust_remote_code=True`.

The folder is written whole (`folder.export_folder`): a loader finds in it one whole export or none,
never the weights of one beside the config.json of another; the user's own files in it stay.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file, save_model
from tokenizers import Tokenizer

from ..config.shape import FIELDS, GPT2_LAYOUT
from ..data.chat import JINJA_TEMPLATE, has_chat_tokens
from ..data.tokenizer import END_OF_TEXT, END_OF_TURN
from ..files import atomic_path, write_json, write_text
from ..model.gpt import GPT, NORM_EPS, ROPE_BASE, GPTConfig
from ..runs.paths import RunPaths
from . import hf_remote
from .folder import export_folder

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# Every file an export writes, whichever its format: a new export into a folder removes the old one's.
EXPORTED_FILES = frozenset(
    {
        WEIGHTS_FILE,
        CONFIG_FILE,
        RunPaths.TOKENIZER.name,
        TOKENIZER_CONFIG_FILE,
        GENERATION_CONFIG_FILE,
        hf_remote.CONFIGURATION_FILE,
        hf_remote.MODELING_FILE,
        hf_remote.MODEL_FILE,
        hf_remote.SHAPE_FILE,
    }
)

# What each architecture is called in the export command's report.
HF_NAMES = {
    "gpt2": "GPT-2 (GPT2LMHeadModel)",
    "llama": "Llama (LlamaForCausalLM)",
    "qwen3": "Qwen3 (Qwen3ForCausalLM)",
    "remote": f"our own code ({hf_remote.ARCHITECTURE}, load with trust_remote_code=True)",
}


# The layout keys whose values the transformers architectures below tell apart. Every other key of GPTConfig
# (config/shape.py) must keep GPT-2's value, except the shape and the keys that change nothing at inference
# (dropout, the initialisation): a layout option added later leads to our own code until it is mapped here.
MAPPED_KEYS = ("bias", "position", "norm", "qk_norm", "activation", "tie_embeddings")


def hf_architecture(config: GPTConfig) -> str:
    """The transformers architecture that computes exactly what `config`'s layout computes: "gpt2",
    "llama" or "qwen3"; "remote" where none does (our own code goes with the weights).

    Initialisation (`zero_init`) and dropout change no computation at inference: they never count. A
    layout key not in MAPPED_KEYS leads to our own code unless it keeps GPT-2's value.
    """
    unmapped = (name for name, item in FIELDS.items() if item.metadata["inference"] and name not in MAPPED_KEYS)
    if any(getattr(config, name) != GPT2_LAYOUT[name] for name in unmapped if name in GPT2_LAYOUT):
        return "remote"
    if config.position == "learned" and config.norm == "layernorm" and not config.qk_norm:
        if config.activation in ("gelu", "relu2"):  # transformers' "gelu" is the exact GELU, "relu2" ReLU squared
            return "gpt2"
    if config.position == "rope" and config.norm == "rmsnorm" and config.activation == "swiglu":
        if not config.qk_norm:
            return "llama"  # its attention_bias and mlp_bias cover all our linear layers' biases
        if not config.bias:
            return "qwen3"  # QK-norm before the rotation, as ours; its MLP has no biases
    return "remote"


def gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under transformers' GPT2LMHeadModel names.

    GPT-2 keeps its linear layers as Conv1D, whose weight is the transpose of nn.Linear's; it always
    has biases, so a model trained without them gets zeros, which compute the same. The embedding
    is cut to the real vocabulary (padded rows are no tokens) and serves as the tied lm_head; an
    untied head is cut alike.
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
    if not config.tie_embeddings:
        exported["lm_head.weight"] = weights["lm_head.weight"][: config.vocab_size]
    for layer in range(config.n_layer):
        ours, theirs = f"blocks.{layer}", f"transformer.h.{layer}"
        exported.update(layer_norm(f"{ours}.ln_1", f"{theirs}.ln_1"))
        exported.update(layer_norm(f"{ours}.ln_2", f"{theirs}.ln_2"))
        exported.update(linear(f"{ours}.attn.qkv", f"{theirs}.attn.c_attn"))
        exported.update(linear(f"{ours}.attn.proj", f"{theirs}.attn.c_proj"))
        exported.update(linear(f"{ours}.mlp.fc", f"{theirs}.mlp.c_fc"))
        exported.update(linear(f"{ours}.mlp.proj", f"{theirs}.mlp.c_proj"))
    return {name: tensor.float().contiguous() for name, tensor in exported.items()}


def gpt2_config(model: GPT, special: dict) -> dict:
    """config.json for transformers' GPT2LMHeadModel: "gelu" is the exact GELU we use, "relu2" ReLU squared."""
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
        "n_inner": config.mlp_hidden,
        "activation_function": config.activation,
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_embeddings,
        **special,
        "torch_dtype": "float32",
    }


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under transformers' LlamaForCausalLM (or Qwen3ForCausalLM) names.

    The fused attention input splits into q_proj, k_proj and v_proj (rows in that order, heads
    contiguous as in Llama), the SwiGLU input into gate_proj and up_proj (gate first, as
    `MLP.forward` chunks it). The embedding, and an untied head, are cut to the real vocabulary.
    """
    config = model.config
    weights = {name: parameter.detach() for name, parameter in model.state_dict().items()}
    exported = {
        "model.embed_tokens.weight": weights["wte.weight"][: config.vocab_size],
        "model.norm.weight": weights["ln_f.weight"],
    }
    if not config.tie_embeddings:
        exported["lm_head.weight"] = weights["lm_head.weight"][: config.vocab_size]

    def linear(ours: str, theirs: list[str]) -> None:
        """`ours` split by rows into len(theirs) equal parts, biases alike."""
        for kind in ("weight", "bias"):
            if f"{ours}.{kind}" in weights:
                parts = weights[f"{ours}.{kind}"].chunk(len(theirs), dim=0)
                exported.update({f"{name}.{kind}": part for name, part in zip(theirs, parts)})

    for layer in range(config.n_layer):
        ours, theirs = f"blocks.{layer}", f"model.layers.{layer}"
        exported[f"{theirs}.input_layernorm.weight"] = weights[f"{ours}.ln_1.weight"]
        exported[f"{theirs}.post_attention_layernorm.weight"] = weights[f"{ours}.ln_2.weight"]
        attention = f"{theirs}.self_attn"
        linear(f"{ours}.attn.qkv", [f"{attention}.q_proj", f"{attention}.k_proj", f"{attention}.v_proj"])
        linear(f"{ours}.attn.proj", [f"{attention}.o_proj"])
        if config.qk_norm:
            exported[f"{attention}.q_norm.weight"] = weights[f"{ours}.attn.q_norm.weight"]
            exported[f"{attention}.k_norm.weight"] = weights[f"{ours}.attn.k_norm.weight"]
        linear(f"{ours}.mlp.fc", [f"{theirs}.mlp.gate_proj", f"{theirs}.mlp.up_proj"])
        linear(f"{ours}.mlp.proj", [f"{theirs}.mlp.down_proj"])
    return {name: tensor.float().contiguous() for name, tensor in exported.items()}


def llama_config(model: GPT, special: dict, architecture: str) -> dict:
    """config.json for transformers' LlamaForCausalLM ("llama") or Qwen3ForCausalLM ("qwen3"): rotary
    base 10000 of the default (unscaled) kind, under both transformers 5's `rope_parameters` and the
    older `rope_theta`; all heads have their own keys and values (no grouped queries)."""
    config = model.config
    rope = {"rope_type": "default", "rope_theta": ROPE_BASE}
    common = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": NORM_EPS,
        "rope_theta": ROPE_BASE,
        "rope_parameters": rope,
        "attention_bias": config.bias,
        "attention_dropout": config.dropout,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": True,
        **special,
        "torch_dtype": "float32",
    }
    if architecture == "qwen3":
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            **common,
            "use_sliding_window": False,
            "max_window_layers": config.n_layer,
        }
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common, "mlp_bias": config.bias}


def remote_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our own weights under `model.` (FragmentForCausalLM holds the GPT as `.model`), padded tables as
    they are; a tied head is the embedding, stored once."""
    weights = model.state_dict()
    if model.config.tie_embeddings:
        weights.pop("lm_head.weight")
    return {f"model.{name}": tensor.detach().float().contiguous() for name, tensor in weights.items()}


def remote_config(model: GPT, special: dict) -> dict:
    """config.json for our own code: the arguments of GPTConfig, and where transformers finds the classes."""
    config = model.config
    return {
        "architectures": [hf_remote.ARCHITECTURE],
        "model_type": hf_remote.MODEL_TYPE,
        "auto_map": hf_remote.AUTO_MAP,
        **asdict(config),
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": False,
        **special,
        "torch_dtype": "float32",
    }


def copy_tokenizer(tokenizer_path: Path, destination: Path) -> None:
    with atomic_path(destination) as temporary:
        shutil.copyfile(tokenizer_path, temporary)


def special_token_ids(tokenizer: Tokenizer) -> dict:
    """The bos, eos and pad ids of config.json and generation_config.json. With the chat tokens, generation
    ends at the end of a turn (`<|end|>`) or of a document (`<|endoftext|>`): transformers' generate stops
    at any id of an eos list."""
    end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    ends = [tokenizer.token_to_id(END_OF_TURN), end_of_text] if has_chat_tokens(tokenizer) else end_of_text
    return {"bos_token_id": end_of_text, "eos_token_id": ends, "pad_token_id": end_of_text}


def tokenizer_config(tokenizer: Tokenizer, block_size: int) -> dict:
    """tokenizer_config.json. With the chat tokens it holds the chat template (data/chat.py's), so that
    `apply_chat_template` gives our conversations' ids, and the end of a turn is the eos token.

    `split_special_tokens` is what transformers tokenizes everything with, the rendered template too.
    Without the chat tokens it is true: `<|endoftext|>` spelled in text is text, as in training
    (tokenizer.text_only). With them it must be false, or the template's own role tokens would be
    split into text; a message that spells a special token then gets that token, as in llama.cpp,
    unless `apply_chat_template(..., sanitize_control_tokens=True)` (transformers 5), which encodes
    them as text, exactly as chat_ids does (export/README.md, "Chat")."""
    chat = has_chat_tokens(tokenizer)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TURN if chat else END_OF_TEXT,
        "pad_token": END_OF_TEXT,
        "unk_token": END_OF_TEXT,
        "model_max_length": block_size,
        "add_prefix_space": False,
        "split_special_tokens": not chat,
    }
    if chat:
        config["chat_template"] = JINJA_TEMPLATE
    return config


def export_hf(model: GPT, tokenizer: Tokenizer, tokenizer_path: Path, out: Path, replace: bool = True) -> str:
    """A folder that `transformers.AutoModelForCausalLM.from_pretrained(out)` and `AutoTokenizer` load
    (with `trust_remote_code=True` for a layout no transformers architecture computes). Returns what
    it was written as, e.g. "Llama (LlamaForCausalLM)". `replace` False: `out` must be empty."""
    special = special_token_ids(tokenizer)
    architecture = hf_architecture(model.config)
    if architecture == "gpt2":
        weights, config = gpt2_state_dict(model), gpt2_config(model, special)
    elif architecture in ("llama", "qwen3"):
        weights, config = llama_state_dict(model), llama_config(model, special, architecture)
    else:
        weights, config = remote_state_dict(model), remote_config(model, special)
    with export_folder(out, replace, CONFIG_FILE, EXPORTED_FILES) as stage:
        with atomic_path(stage(WEIGHTS_FILE)) as temporary:
            save_file(weights, str(temporary), metadata={"format": "pt"})
        if architecture == "remote":
            for name, source in hf_remote.remote_files().items():
                write_text(stage(name), source)
        write_json(stage(CONFIG_FILE), config)
        write_json(stage(GENERATION_CONFIG_FILE), special)
        copy_tokenizer(tokenizer_path, stage(RunPaths.TOKENIZER.name))
        write_json(stage(TOKENIZER_CONFIG_FILE), tokenizer_config(tokenizer, model.config.block_size))
    return HF_NAMES[architecture]


def export_safetensors(model: GPT, tokenizer_path: Path, out: Path, replace: bool = True) -> None:
    """Our own layout: model.safetensors (safetensors.torch.load_model loads it into a GPT built from
    config.json, which holds GPTConfig's arguments) and the tokenizer. `replace` False: `out` must be empty."""
    with export_folder(out, replace, CONFIG_FILE, EXPORTED_FILES) as stage:
        with atomic_path(stage(WEIGHTS_FILE)) as temporary:
            save_model(model, str(temporary), metadata={"format": "pt"})
        write_json(stage(CONFIG_FILE), asdict(model.config))
        copy_tokenizer(tokenizer_path, stage(RunPaths.TOKENIZER.name))
