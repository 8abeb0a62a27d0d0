"""The GPT: GPT-2's layout and initialisation, attention through PyTorch's SDPA, and a key/value cache
so that generating a token runs the model on that one new position only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = False


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """Embedding rows rounded up to a multiple of 64: the padded rows are never targets."""
    return -(-vocab_size // multiple) * multiple


class KVCache:
    """Keys and values of every position seen so far, for each layer, in tensors allocated once for
    the whole context. Positions are absolute (learned position embeddings), so a cache holds at most
    `block_size` positions; going further means starting a new cache on a shorter context."""

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, config.n_head, config.block_size, config.n_embd // config.n_head)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.length = 0

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys and values for `layer`; return all of that layer's so far.
        `length` moves on once every layer has appended (in GPT.forward)."""
        end = self.length + keys.size(2)
        self.keys[layer][:, :, self.length : end] = keys
        self.values[layer][:, :, self.length : end] = values
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.qkv(x).split(channels, dim=2)
        q, k, v = (t.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2) for t in (q, k, v))
        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.append(self.layer, k, v)
        # New position i sees the `past` cached positions and the new ones up to itself: plain causal
        # attention when nothing is cached, every position when one new position is added.
        mask = None
        if past > 0 and time > 1:
            mask = torch.ones(time, past + time, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=past == 0 and time > 1
        )
        y = y.transpose(1, 2).contiguous().view(batch, time, channels)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The exact (erf) GELU: on CPU it runs about twice as fast as the tanh approximation.
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(padded_vocab_size(config.vocab_size), config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, self.wte.num_embeddings, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), one per attention and MLP.
        for name, parameter in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, non_embedding: bool = False) -> int:
        count = sum(parameter.numel() for parameter in self.parameters())
        return count - self.wpe.weight.numel() if non_embedding else count

    def flops_per_token(self) -> int:
        """Training FLOPs per token (PaLM's estimate, as nanoGPT's MFU): 6 per parameter for forward and
        backward (position embeddings excluded), plus the attention scores and their weighted sum,
        12 x layers x width x context."""
        config = self.config
        return 6 * self.num_parameters(non_embedding=True) + 12 * config.n_layer * config.n_embd * config.block_size

    def new_cache(self, batch_size: int) -> KVCache:
        weight = self.wte.weight
        return KVCache(self.config, batch_size, weight.device, weight.dtype)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of `idx` (and the loss against `targets`). With a `cache`, `idx`
        continues the positions already cached, and their keys and values are added to it."""
        past = 0 if cache is None else cache.length
        time = idx.size(1)
        if past + time > self.config.block_size:
            raise ValueError(
                f"sequence of {past + time} tokens is longer than block_size {self.config.block_size}"
            )
        x = self.drop(self.wte(idx) + self.wpe.weight[past : past + time])
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += time
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
