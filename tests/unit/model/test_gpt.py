"""The GPT: shapes, GPT-2 layout and initialisation statistics."""

from __future__ import annotations

import math

import pytest
import torch

from fragment_llm.model.gpt import GPT, GPTConfig, padded_vocab_size


def make(**keys) -> GPT:
    options = dict(vocab_size=1000, block_size=128, n_layer=2, n_head=4, n_embd=64)
    options.update(keys)
    torch.manual_seed(0)
    return GPT(GPTConfig(**options))


def test_shapes_padding_and_tied_embeddings():
    model = make()
    assert padded_vocab_size(1000) == 1024 and padded_vocab_size(1024) == 1024
    idx = torch.randint(0, 1000, (3, 50))
    logits, loss = model(idx)
    assert logits.shape == (3, 50, 1024) and loss is None
    assert model.lm_head.weight is model.wte.weight
    _, loss = model(idx, torch.randint(0, 1000, (3, 50)))
    assert loss.shape == () and math.isclose(loss.item(), math.log(1024), rel_tol=0.05)


def test_gpt2_initialisation_statistics():
    model = make(n_layer=6, n_embd=256, n_head=8)
    residual_std = 0.02 / math.sqrt(2 * 6)
    for name, parameter in model.named_parameters():
        if name.endswith("proj.weight"):
            assert parameter.std().item() == pytest.approx(residual_std, rel=0.05), name
        elif parameter.dim() == 2:
            assert parameter.std().item() == pytest.approx(0.02, rel=0.05), name
        elif name.endswith("weight"):
            assert torch.all(parameter == 1), name  # LayerNorm gains


def test_bias_flag_gives_gpt2_exact_layout():
    without = {name for name, _ in make().named_parameters()}
    with_bias = {name for name, _ in make(bias=True).named_parameters()}
    assert not any(name.endswith("bias") for name in without)
    added = with_bias - without
    assert "blocks.0.attn.qkv.bias" in added and "blocks.0.ln_1.bias" in added and "ln_f.bias" in added
    assert all(torch.all(p == 0) for n, p in make(bias=True).named_parameters() if n.endswith("bias"))


def test_attention_is_causal():
    model = make().eval()
    idx = torch.randint(0, 1000, (1, 20))
    changed = idx.clone()
    changed[0, 15] = (idx[0, 15] + 1) % 1000
    before, _ = model(idx)
    after, _ = model(changed)
    assert torch.allclose(before[0, :15], after[0, :15], atol=1e-6)
    assert not torch.allclose(before[0, 15:], after[0, 15:])


def test_dropout_is_active_only_in_training():
    model = make(dropout=0.5)
    idx = torch.randint(0, 1000, (2, 30))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


def test_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="longer than block_size"):
        make()(torch.zeros(1, 129, dtype=torch.long))


def test_the_key_value_cache_gives_the_logits_of_the_full_forward():
    model = make(dropout=0.1).eval()
    idx = torch.randint(0, 1000, (2, 60))
    full, _ = model(idx)
    cache = model.new_cache(batch_size=2)
    pieces = [model(idx[:, start:end], cache=cache)[0] for start, end in ((0, 40), (40, 41), (41, 50), (50, 60))]
    assert cache.length == 60
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


def test_a_full_cache_refuses_more_positions():
    model = make().eval()
    cache = model.new_cache(batch_size=1)
    model(torch.zeros(1, 128, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
