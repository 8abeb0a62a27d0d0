"""Export to GGUF, the one-file format of llama.cpp (and of the runtimes built on it: Ollama, LM Studio,
llama-cpp-python), for the layouts llama.cpp has an architecture for.

The tensors are the Hugging Face export's (hf.py), renamed the way llama.cpp's own converter
(convert_hf_to_gguf.py) renames them, through the `gguf` package's name map, with the converter's two
changes: GPT-2's Conv1D weights turned back into linear ones, and Llama's query and key rows reordered
for llama.cpp's rotation of adjacent channel pairs (the Hugging Face layout rotates the two halves of
a head; Qwen3 in llama.cpp rotates halves, as we do). Every tensor is float32: these models are small,
and a GGUF quantiser (llama-quantize) makes smaller files from it.

The tokenizer goes with the weights: the byte-level BPE vocabulary and merges, GPT-2's pre-tokenizer,
`<|endoftext|>` and the chat tokens as control tokens, and the chat template of data/chat.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from tokenizers import Tokenizer

from ..data.chat import JINJA_TEMPLATE, has_chat_tokens
from ..data.tokenizer import END_OF_TEXT, END_OF_TURN
from ..errors import UserError
from ..files import atomic_path
from ..model.gpt import GPT, NORM_EPS, ROPE_BASE
from .hf import gpt2_state_dict, hf_architecture, llama_state_dict

# Our layouts that llama.cpp computes, by the name of its architecture (hf.hf_architecture tells them
# apart), and the overrides that train each. GPT-2's with GELU only: llama.cpp's GPT-2 has no other
# activation (and computes GELU's tanh approximation, as transformers' GPT-2 does from a GGUF file).
# Llama's without biases: llama.cpp reads them, but transformers' GGUF reader drops them, so no check.
GGUF_LAYOUTS = {
    "gpt2": "arch=gpt2",
    "llama": "arch=llama",
    "qwen3": "arch=llama model.qk_norm=true",
}
# GPT-2 keeps these as Conv1D (transposed) in Hugging Face's layout; llama.cpp as linear layers.
CONV1D = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")


class WrittenByPython(np.ndarray):
    """A tensor that the GGUF writer writes with the file's own `write`: numpy's `tofile`, which it calls,
    loses the reason of a failed write (a full disk, a size limit), leaving only "N requested and M written"."""

    def tofile(self, file, *args, **kwargs) -> None:
        file.write(np.ndarray.tobytes(self))


class GGUFError(UserError):
    """A layout llama.cpp has no architecture for: one line naming those it has."""


def gguf_architecture(model: GPT) -> str | None:
    """The llama.cpp architecture that computes `model`'s layout, or None."""
    config = model.config
    architecture = hf_architecture(config)
    if architecture == "gpt2" and config.activation != "gelu" or architecture == "llama" and config.bias:
        return None
    return architecture if architecture in GGUF_LAYOUTS else None


def layout_problem(model: GPT) -> str | None:
    """Why `model` does not export to GGUF, one line, or None."""
    if gguf_architecture(model) is not None:
        return None
    layouts = ", ".join(f"{name} ({override})" for name, override in GGUF_LAYOUTS.items())
    return (
        f"GGUF holds only the layouts llama.cpp has an architecture for: {layouts}, the last two without "
        "model.bias; this model's layout is none of them. Train with one of those overrides, or export "
        "this run with --format hf"
    )


def gguf_tensors(model: GPT, architecture: str) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's names, as llama.cpp's converter writes a Hugging Face model."""
    if architecture == "gpt2":
        weights = gpt2_state_dict(model)
    else:
        weights = llama_state_dict(model)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[architecture.upper()], model.config.n_layer)
    tensors = {}
    for hf_name, tensor in weights.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise RuntimeError(f"no GGUF name for {hf_name}")
        if architecture == "gpt2" and name.endswith(CONV1D):
            tensor = tensor.t()
        if architecture == "llama" and (".attn_q." in name or ".attn_k." in name):
            tensor = pairs_from_halves(tensor, model.config.n_head)
        tensors[name] = tensor.contiguous().numpy()
    return tensors


def pairs_from_halves(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Query or key rows (and biases), each head's channels reordered from two halves (channel i turns
    with channel i + size/2) to adjacent pairs (2i with 2i + 1): convert_hf_to_gguf.py's `permute`."""
    shape = tensor.shape
    return tensor.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def tokenizer_vocabulary(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """The tokens by id (as the byte-level vocabulary spells them), each token's GGUF type (control for
    the special tokens), and the merges as "left right" strings."""
    tokens = [tokenizer.id_to_token(index) for index in range(vocab_size)]
    if None in tokens:
        raise RuntimeError(f"the tokenizer has no token {tokens.index(None)} of its {vocab_size}")
    special = {token.content for token in tokenizer.get_added_tokens_decoder().values() if token.special}
    types = [gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL for token in tokens]
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return tokens, types, [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]


def write_metadata(writer, model: GPT, architecture: str) -> None:
    """The hyperparameters llama.cpp reads for `architecture`."""
    config = model.config
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(config.mlp_hidden)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    if architecture == "gpt2":
        writer.add_layer_norm_eps(1e-5)  # nn.LayerNorm's
        return
    writer.add_head_count_kv(config.n_head)
    writer.add_layer_norm_rms_eps(NORM_EPS)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_rope_dimension_count(config.head_size)
    writer.add_key_length(config.head_size)
    writer.add_value_length(config.head_size)
    writer.add_vocab_size(config.vocab_size)


def write_tokenizer(writer, tokenizer: Tokenizer, vocab_size: int) -> None:
    """The tokenizer, its special tokens and, with the chat tokens, the chat template. A turn ends at
    `<|end|>` (the end of generation for a chat), a document at `<|endoftext|>`; no token is added
    before a text (the chat template writes `<|endoftext|>` itself)."""
    tokens, types, merges = tokenizer_vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    end_of_text = tokenizer.token_to_id(END_OF_TEXT)
    writer.add_bos_token_id(end_of_text)
    writer.add_pad_token_id(end_of_text)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if has_chat_tokens(tokenizer):
        writer.add_eos_token_id(tokenizer.token_to_id(END_OF_TURN))
        writer.add_eot_token_id(tokenizer.token_to_id(END_OF_TURN))
        writer.add_chat_template(JINJA_TEMPLATE)
    else:
        writer.add_eos_token_id(end_of_text)


def export_gguf(model: GPT, tokenizer: Tokenizer, out: Path, name: str) -> str:
    """`out`, one GGUF file of `model` and its tokenizer, written whole (a temporary file renamed). Returns
    the llama.cpp architecture it was written as; a GGUFError for a layout llama.cpp has none for."""
    problem = layout_problem(model)
    if problem is not None:
        raise GGUFError(problem)
    architecture = gguf_architecture(model)
    tensors = gguf_tensors(model, architecture)
    with atomic_path(Path(out)) as temporary:
        writer = gguf.GGUFWriter(temporary, architecture)
        try:
            writer.add_name(name)
            writer.add_file_type(gguf.LlamaFileType.ALL_F32)
            write_metadata(writer, model, architecture)
            write_tokenizer(writer, tokenizer, model.config.vocab_size)
            for tensor_name, tensor in tensors.items():
                writer.add_tensor(tensor_name, tensor.view(WrittenByPython))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return architecture
