"""A model's shape and layout, defined once: `GPTConfig`'s fields, the values each layout key may take, the
range a run may set, the limits a model file may claim, and what each key means.

Everything else derives from here: the schema's `model.*` keys (config/schema.py), the check of a
checkpoint's model_config (`config_problem`), and the transformers architecture an export maps to
(export/hf.py). Adding a layout option is a field here, its code in model/gpt.py, and its value in
conf/arch/. The defaults are GPT-2's layout: a checkpoint written before a key existed holds only the
keys of its time, and builds the model it was trained as.

Standard library only: a trust_remote_code export ships this file beside the model's code.
"""

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional


class Position(str, Enum):
    learned = "learned"
    rope = "rope"


class Norm(str, Enum):
    layernorm = "layernorm"
    rmsnorm = "rmsnorm"


class Activation(str, Enum):
    gelu = "gelu"
    relu2 = "relu2"
    swiglu = "swiglu"


def key(
    help: str,
    low: Optional[float] = None,
    high: Optional[float] = None,
    *,
    limits: Optional[tuple[float, float]] = None,
    choices: Optional[type[Enum]] = None,
    default: Any = dataclasses.MISSING,
    inference: bool = True,
) -> Any:
    """A field of GPTConfig: its help, the range [low, high] a run's settings may give it, the wider
    `limits` a model file may claim (anything outside is a damaged or foreign file), its `choices`,
    GPT-2's value as `default`, and whether it changes what the model computes at inference."""
    metadata: dict[str, Any] = {"help": help, "inference": inference}
    if low is not None:
        metadata["range"] = (low, high)
        metadata["limits"] = limits or (low, high)
    if choices is not None:
        metadata["choices"] = choices
    return field(default=default, metadata=metadata)


@dataclass
class GPTConfig:
    """A model's shape and layout: what model/gpt.py builds, and what a checkpoint's model_config holds."""

    vocab_size: int = key(
        "target size of the BPE vocabulary; a corpus that yields fewer tokens says so, and "
        "the model uses the real vocabulary (embedding rows padded to a multiple of 64)",
        256,
        100_000,
        limits=(1, 1 << 20),
    )
    block_size: int = key("context length in tokens", 16, 4096, limits=(1, 1 << 16))
    n_layer: int = key("transformer blocks", 1, 48, limits=(1, 256))
    n_head: int = key(
        "attention heads; must divide `model.n_embd` (into an even head size with `model.position=rope`)",
        1,
        32,
        limits=(1, 256),
    )
    n_embd: int = key("width of the token embeddings and the residual stream", 64, 2048, limits=(1, 1 << 16))
    dropout: float = key("dropout probability", 0.0, 0.9, limits=(0.0, 1.0), default=0.0, inference=False)
    bias: bool = key("true: biases in linear layers and LayerNorms (GPT-2's exact layout)", default=False)
    # The layout (conf/arch/; conf/README.md, "Model layout").
    position: str = key(
        "a learned position table (GPT-2's), or rotary position embeddings (queries and keys turned by their "
        "position: nothing to learn, and the key/value cache rolls on past the context)",
        choices=Position,
        default="learned",
    )
    norm: str = key("LayerNorm, or RMSNorm (no mean, no bias)", choices=Norm, default="layernorm")
    qk_norm: bool = key(
        "true: queries and keys normalised per head (with `model.norm`) before attention", default=False
    )
    activation: str = key(
        "the MLP's activation: GELU (exact), ReLU squared, or SwiGLU (a gated MLP with 2/3 of the hidden width, "
        "so about the same FLOPs)",
        choices=Activation,
        default="gelu",
    )
    tie_embeddings: bool = key(
        "false: a separate output head, zero-initialised (uniform predictions at the start)", default=True
    )
    zero_init: bool = key(
        "true: the residual projections start at zero, so each block starts as the identity (else GPT-2's "
        "0.02/sqrt(2 x layers))",
        default=False,
        inference=False,
    )
    logit_softcap: float = key("logits = c tanh(logits / c); 0 is off", 0.0, 1000.0, default=0.0)
    value_embeddings: bool = key(
        "true: every other layer (ending with the last) adds a second token embedding, times a learned scale, "
        "to attention's values",
        default=False,
    )
    residual_scalars: bool = key(
        "true: before each block x = a x + b x0, with a learned a and b per layer and x0 the embedded input",
        default=False,
    )
    embed_norm: bool = key("true: a norm right after the token embedding", default=False)

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """4 x width; SwiGLU's two input matrices get 2/3 of that each (rounded up to 32), so the MLP
        keeps about the same weights and FLOPs whatever its activation."""
        if self.activation == "swiglu":
            return -(-8 * self.n_embd // 3 // 32) * 32
        return 4 * self.n_embd

    def value_embedding_layers(self) -> list[int]:
        """The layers that mix a value embedding into attention's values: every other one, ending
        with the last (as nanochat's alternating layers)."""
        if not self.value_embeddings:
            return []
        return [layer for layer in range(self.n_layer) if (self.n_layer - 1 - layer) % 2 == 0]


FIELDS = {item.name: item for item in dataclasses.fields(GPTConfig)}
GPT2_LAYOUT = {name: item.default for name, item in FIELDS.items() if item.default is not dataclasses.MISSING}


def valid_heads(n_embd: int, position: str, most: int = 32) -> list[int]:
    """The head counts (up to `most`) that split `n_embd` into heads, of an even size with rotary positions."""
    return [
        heads
        for heads in range(1, most + 1)
        if n_embd % heads == 0 and (position != Position.rope or (n_embd // heads) % 2 == 0)
    ]


def config_problem(config: Any) -> Optional[str]:
    """What is wrong with a model_config read from a file (a dict of GPTConfig's fields), or None."""
    if not isinstance(config, dict):
        return "model_config is not a dict"
    if set(config) - set(FIELDS) or not {name for name in FIELDS if name not in GPT2_LAYOUT} <= set(config):
        return f"model_config has the keys {sorted(config)}, not a model's"
    for name, item in FIELDS.items():
        value = config.get(name, item.default)
        if "choices" in item.metadata:
            allowed = [choice.value for choice in item.metadata["choices"]]
            if value not in allowed:
                return f"model_config.{name}={value!r} is not one of {', '.join(allowed)}"
        elif item.type is bool:
            if not isinstance(value, bool):
                return f"model_config.{name}={value!r} is not true or false"
        else:  # sizes are whole numbers; fractions and caps may be either
            low, high = item.metadata["limits"]
            kinds = (int, float) if item.type is float else int
            if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
                return f"model_config.{name}={value!r} is not in [{low}, {high}]"
    position = config.get("position", GPT2_LAYOUT["position"])
    if config["n_embd"] % config["n_head"] or (position == Position.rope and config["n_embd"] // config["n_head"] % 2):
        return (
            f"model_config.n_embd={config['n_embd']} does not split into {config['n_head']} heads "
            "of its position's size"
        )
    return None
