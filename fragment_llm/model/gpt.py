"""The GPT: GPT-2's layout, or the modern one of the small-model speedruns (rotary positions, RMSNorm,
QK-norm, ReLU squared, an untied zero-initialised head, logit soft-capping, value embeddings and
learnable residual scalars), each part chosen by a key of `GPTConfig` (config/shape.py). Attention runs
through PyTorch's SDPA, and a key/value cache runs generation on the new position only.

It imports only torch and config/shape.py: a trust_remote_code export ships the two files as they are."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config.shape import GPTConfig  # the one definition of a model's shape and layout

ROPE_BASE = 10_000.0
NORM_EPS = 1e-6


def padded_vocab_size(vocab_size: int, multiple: int = 64) -> int:
    """Embedding rows rounded up to a multiple of 64: the padded rows are never targets."""
    return -(-vocab_size // multiple) * multiple


def make_norm(config: GPTConfig, size: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(size, eps=NORM_EPS)
    return nn.LayerNorm(size, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embeddings (the rotate-half form of GPT-NeoX and Llama): channel i of each
    head's first half turns with channel i of its second half, by an angle of position x base^(-2i/size).
    The angles for the first `block_size` positions are kept; a cache that rolls past them gets its
    angles computed, in float64, so a position in the millions is as exact as position 1."""

    def __init__(self, head_size: int, block_size: int):
        super().__init__()
        self.head_size = head_size
        cos, sin = self.angles(0, block_size)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.beyond: tuple | None = None

    def angles(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        inverse = ROPE_BASE ** -(torch.arange(0, self.head_size, 2, dtype=torch.float64) / self.head_size)
        angle = torch.arange(start, start + length, dtype=torch.float64)[:, None] * inverse
        angle = torch.cat((angle, angle), dim=-1)
        return angle.cos().float(), angle.sin().float()

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """`x` (batch, heads, time, head_size) rotated for positions start, start + 1, ..."""
        length = x.size(2)
        if start + length <= self.cos.size(0):
            cos, sin = self.cos[start : start + length], self.sin[start : start + length]
        else:  # past the table: computed once per position, then reused by every layer's queries and keys
            if self.beyond is None or self.beyond[0] != (start, length):
                self.beyond = ((start, length), *(t.to(x.device) for t in self.angles(start, length)))
            cos, sin = self.beyond[1:]
        half = self.head_size // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class KVCache:
    """Keys and values of the positions seen so far, for each layer, in tensors of `block_size`
    positions allocated once. With learned positions it holds at most `block_size` positions. With
    rotary positions it rolls: attention then depends only on how far apart two positions are, so once
    it is full each new position overwrites the oldest, and the window slides one token at a time with
    no recomputation."""

    def __init__(self, config: GPTConfig, batch_size: int, device: torch.device, dtype: torch.dtype):
        shape = (batch_size, config.n_head, config.block_size, config.head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.block_size = config.block_size
        self.rolls = config.position == "rope"
        self.length = 0  # positions seen so far: the next one's position

    def fits(self, time: int) -> bool:
        """Whether `time` new positions can be added: while there is room, or one at a time once it rolls."""
        return self.length + time <= self.block_size or (self.rolls and time == 1)

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys and values for `layer`; return all of that layer's held. Once the
        cache rolls they come in slot order, not position order: a single query attends to all of them,
        and the order of keys does not change attention. `length` moves on once every layer has appended
        (in GPT.forward)."""
        end = self.length + keys.size(2)
        if end > self.block_size:
            slot = self.length % self.block_size
            self.keys[layer][:, :, slot : slot + 1] = keys
            self.values[layer][:, :, slot : slot + 1] = values
            return self.keys[layer], self.values[layer]
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
        self.q_norm = make_norm(config, config.head_size) if config.qk_norm else None
        self.k_norm = make_norm(config, config.head_size) if config.qk_norm else None
        # A value embedding's weight in the values, learned (0.5 as in the speedrun records).
        self.value_scale = nn.Parameter(torch.tensor(0.5)) if layer in config.value_embedding_layers() else None
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, rotary: Rotary | None, value_embedding: torch.Tensor | None, cache: KVCache | None
    ) -> torch.Tensor:
        batch, time, channels = x.shape
        q, k, v = self.qkv(x).split(channels, dim=2)
        if value_embedding is not None:
            v = v + self.value_scale * value_embedding
        q, k, v = (t.view(batch, time, self.n_head, channels // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        past = 0 if cache is None else cache.length
        if rotary is not None:
            q, k = rotary(q, past), rotary(k, past)
        if cache is not None:
            k, v = cache.append(self.layer, k, v)
        # New position i sees the `past` cached positions and the new ones up to itself: plain causal
        # attention when nothing is cached, every position held when one new position is added.
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
        self.activation = config.activation
        inputs = 2 if config.activation == "swiglu" else 1  # SwiGLU: the gate's and the values' matrices, as one
        self.fc = nn.Linear(config.n_embd, inputs * config.mlp_hidden, bias=config.bias)
        self.proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        if self.activation == "relu2":
            x = F.relu(x).square()
        elif self.activation == "swiglu":
            gate, x = x.chunk(2, dim=-1)
            x = F.silu(gate) * x
        else:
            # The exact (erf) GELU: on CPU it runs about twice as fast as the tanh approximation.
            x = F.gelu(x)
        return self.dropout(self.proj(x))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, rotary: Rotary | None, value_embedding: torch.Tensor | None, cache: KVCache | None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rotary, value_embedding, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        vocab = padded_vocab_size(config.vocab_size)
        self.wte = nn.Embedding(vocab, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.rotary = Rotary(config.head_size, config.block_size) if config.position == "rope" else None
        self.ln_emb = make_norm(config, config.n_embd) if config.embed_norm else None
        self.drop = nn.Dropout(config.dropout)
        self.value_embeds = nn.ModuleDict(
            {str(layer): nn.Embedding(vocab, config.n_embd) for layer in config.value_embedding_layers()}
        )
        if config.residual_scalars:
            # Before each block, x = residual_scale x + x0_scale x0, where x0 is the embedded input:
            # every layer can reach the input directly (the speedruns' "x0 shortcut").
            self.residual_scales = nn.Parameter(torch.ones(config.n_layer))
            self.x0_scales = nn.Parameter(torch.full((config.n_layer,), 0.1))
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_f = make_norm(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, vocab, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith("proj.weight"):
                if config.zero_init:  # each block starts as the identity (the speedruns' zero-init projections)
                    nn.init.zeros_(parameter)
                else:  # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer)
                    nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if not config.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)  # an untied head starts at uniform predictions

    def set_dropout(self, probability: float) -> None:
        """Dropout, everywhere it applies, from the next forward on (it has no weights: a trainer may
        choose it once it knows how many epochs the run makes)."""
        self.config.dropout = probability
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = probability
            elif isinstance(module, CausalSelfAttention):
                module.dropout = probability

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """All weights; with `non_embedding`, those that take part in matmuls: without the position
        and value embedding tables, and without the token embedding when it is not also the head."""
        count = sum(parameter.numel() for parameter in self.parameters())
        if not non_embedding:
            return count
        lookups = [*self.value_embeds.values()] + ([self.wpe] if self.wpe is not None else [])
        if not self.config.tie_embeddings:
            lookups.append(self.wte)
        return count - sum(table.weight.numel() for table in lookups)

    def flops_per_token(self) -> int:
        """Training FLOPs per token (PaLM's estimate, as nanoGPT's MFU): 6 per weight that takes part in
        a matmul, for forward and backward, plus the attention scores and their weighted sum,
        12 x layers x width x context. Norms, rotations, soft-capping and scalars are elementwise:
        not counted."""
        config = self.config
        return 6 * self.num_parameters(non_embedding=True) + 12 * config.n_layer * config.n_embd * config.block_size

    def new_cache(self, batch_size: int) -> KVCache:
        weight = self.wte.weight
        return KVCache(self.config, batch_size, weight.device, weight.dtype)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of `idx` (and the mean loss over `targets`, those of -1 ignored: the
        words a chat fine-tune does not learn). With a `cache`, `idx` continues the positions already
        cached, and their keys and values are added to it."""
        config = self.config
        past = 0 if cache is None else cache.length
        time = idx.size(1)
        if (cache is None and time > config.block_size) or (cache is not None and not cache.fits(time)):
            raise ValueError(f"sequence of {past + time} tokens is longer than block_size {config.block_size}")
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe.weight[past : past + time]
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        x = x0 = self.drop(x)
        for layer, block in enumerate(self.blocks):
            if config.residual_scalars:
                x = self.residual_scales[layer] * x + self.x0_scales[layer] * x0
            table = self.value_embeds[str(layer)] if str(layer) in self.value_embeds else None
            x = block(x, self.rotary, None if table is None else table(idx), cache)
        if cache is not None:
            cache.length += time
        logits = self.lm_head(self.ln_f(x))
        if config.logit_softcap:
            logits = config.logit_softcap * torch.tanh(logits / config.logit_softcap)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss
