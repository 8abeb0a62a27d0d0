"""The code of a Hugging Face export that no transformers architecture computes exactly.

A layout with any of the modern parts that Llama, Qwen3 and GPT-2 lack (soft-capped logits, value
embeddings, residual scalars, a norm after the embedding, QK-norm with LayerNorm, ...) is exported as a
folder that `transformers.AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` loads:
config.json names the classes below in its `auto_map`, and the folder holds their source, written from
the strings here, beside `fragment_model.py` and `fragment_shape.py`, copies of our own model/gpt.py and
config/shape.py (they import only torch and each other), so the model that runs in transformers is this
package's GPT itself, not a second implementation of it. transformers' dynamic-module loader copies the
files a remote file imports relatively (`from .fragment_model import GPT`) with it.

Nothing here imports transformers: the export writes these files without it.
"""

from __future__ import annotations

from importlib import resources

CONFIGURATION_FILE = "configuration_fragment.py"
MODELING_FILE = "modeling_fragment.py"
MODEL_FILE = "fragment_model.py"
SHAPE_FILE = "fragment_shape.py"
MODEL_TYPE = "fragment_gpt"
AUTO_MAP = {
    "AutoConfig": "configuration_fragment.FragmentConfig",
    "AutoModelForCausalLM": "modeling_fragment.FragmentForCausalLM",
}
ARCHITECTURE = "FragmentForCausalLM"

CONFIGURATION_SOURCE = '''\
"""The configuration of a Fragment LLM GPT for transformers: the arguments of `GPTConfig`
(fragment_shape.py), with transformers' usual names for its shape."""

from dataclasses import MISSING, fields

from transformers import PretrainedConfig

from .fragment_shape import GPTConfig


class FragmentConfig(PretrainedConfig):
    model_type = "fragment_gpt"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "block_size",
    }

    def __init__(self, **kwargs):
        # Every field of GPTConfig; the shape has no default (None: a config to read, not to build from).
        for field in fields(GPTConfig):
            default = None if field.default is MISSING else field.default
            setattr(self, field.name, kwargs.pop(field.name, default))
        kwargs.setdefault("tie_word_embeddings", self.tie_embeddings)
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)

    def gpt_config(self) -> GPTConfig:
        return GPTConfig(**{field.name: getattr(self, field.name) for field in fields(GPTConfig)})
'''

MODELING_SOURCE = '''\
"""A Fragment LLM GPT in transformers: `FragmentForCausalLM` holds the GPT of fragment_model.py (a copy of
fragment_llm/model/gpt.py) as `.model` and gives transformers' causal-LM interface around it.

- Logits are cut to `config.vocab_size`, the tokenizer's tokens: the embedding and the head keep the
  rows that pad them to a multiple of 64, which are never tokens.
- No key/value cache: every generation step recomputes the whole context (the models are small).
- The context is at most `block_size` (`config.max_position_embeddings`) tokens. `forward` refuses a
  longer input (ValueError). `generate` slides a window of the last `block_size` tokens, so it can go
  on past the context length: with rotary positions that is exactly what `fragment-llm generate` does;
  with learned positions `fragment-llm generate` slides by half a block instead, so the two part ways
  once the context is full.
- An attention mask may only pad on the right (left padding raises ValueError): the GPT reads every
  token of its input.
"""

import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_fragment import FragmentConfig
from .fragment_model import GPT, Rotary


class FragmentForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = FragmentConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    # Tied only where config.tie_word_embeddings is true (transformers checks it).
    _tied_weights_keys = {"model.lm_head.weight": "model.wte.weight"}

    def __init__(self, config: FragmentConfig):
        super().__init__(config)
        self.model = GPT(config.gpt_config())
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # no key/value cache: generate recomputes the context

    def _init_weights(self, module):
        # The weights come from model.safetensors (or GPT's own init); only the rotary angles, buffers
        # that are not saved, are computed here: transformers builds the model on the meta device.
        if isinstance(module, Rotary):
            cos, sin = module.angles(0, module.cos.size(0))
            with torch.no_grad():
                module.cos.copy_(cos)
                module.sin.copy_(sin)

    def get_input_embeddings(self):
        return self.model.wte

    def set_input_embeddings(self, value):
        self.model.wte = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def set_output_embeddings(self, value):
        self.model.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None, return_dict=None, **kwargs):
        if input_ids is None or inputs_embeds is not None:
            raise ValueError("FragmentForCausalLM takes input_ids (not inputs_embeds)")
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.size(1) > 1:
            if (attention_mask[:, 1:] > attention_mask[:, :-1]).any():
                raise ValueError("FragmentForCausalLM reads every input token: pad on the right, not the left")
        logits, _ = self.model(input_ids)
        logits = logits[..., : self.config.vocab_size]
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].reshape(-1, logits.size(-1)).float()
            loss = F.cross_entropy(shifted, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        output = CausalLMOutputWithPast(loss=loss, logits=logits)
        return output if return_dict is not False else output.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        """The whole context each step (no cache), at most its last block_size tokens."""
        window = input_ids[:, -self.config.block_size :]
        inputs = {"input_ids": window}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask[:, -window.size(1) :]
        return inputs
'''


# How model/gpt.py imports config/shape.py, and how its copy imports the shape's copy beside it.
SHAPE_IMPORT = "from ..config.shape import"
COPIED_SHAPE_IMPORT = f"from .{SHAPE_FILE.removesuffix('.py')} import"


def package_source(package: str, name: str) -> str:
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def model_source() -> str:
    """fragment_llm/model/gpt.py, which the remote code imports as fragment_model.py."""
    source = package_source("fragment_llm.model", "gpt.py")
    if source.count(SHAPE_IMPORT) != 1:
        raise RuntimeError(f"model/gpt.py must import config/shape.py once as `{SHAPE_IMPORT} ...`")
    return source.replace(SHAPE_IMPORT, COPIED_SHAPE_IMPORT)


def remote_files() -> dict[str, str]:
    """The code files of a trust_remote_code export, by file name."""
    return {
        MODEL_FILE: model_source(),
        SHAPE_FILE: package_source("fragment_llm.config", "shape.py"),
        CONFIGURATION_FILE: CONFIGURATION_SOURCE,
        MODELING_FILE: MODELING_SOURCE,
    }
