"""The GPT (model/gpt.py): shapes, GPT-2's layout and initialisation, the key/value cache; and its layout
options, alone and together: they train, they count their FLOPs, the cache gives the uncached model's
logits (rolling past the context with rotary positions), and a checkpoint from before them builds GPT-2."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import SHAPE, small_gpt

from fragment_llm.model.generate import Sampling, generate_tokens
from fragment_llm.model.gpt import GPT, GPTConfig, padded_vocab_size
from fragment_llm.train.checkpoint import checkpoint_problem


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


def test_targets_of_minus_one_are_left_out_of_the_loss():
    """A chat batch's targets the fine-tune does not learn are -1: the loss is the mean over the others."""
    model = make()
    idx, targets = torch.randint(0, 1000, (2, 20)), torch.randint(0, 1000, (2, 20))
    learned = torch.rand(2, 20) < 0.4
    logits, loss = model(idx, targets.masked_fill(~learned, -1))
    expected = torch.nn.functional.cross_entropy(logits[learned], targets[learned])
    assert torch.allclose(loss, expected)


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


ALL_ON = dict(
    position="rope",
    norm="rmsnorm",
    qk_norm=True,
    activation="relu2",
    tie_embeddings=False,
    zero_init=True,
    logit_softcap=15.0,
    value_embeddings=True,
    residual_scalars=True,
    embed_norm=True,
)


EACH = [
    {},
    *({key: value} for key, value in ALL_ON.items()),
    {"activation": "swiglu"},
    ALL_ON,
    {**ALL_ON, "activation": "swiglu"},
]


NAMES = ["gpt2", *ALL_ON, "swiglu", "all", "all-swiglu"]


@pytest.mark.parametrize("options", EACH, ids=NAMES)
def test_every_option_trains_and_its_cache_matches_the_full_forward(options):
    model = small_gpt(**options)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.randint(0, 300, (4, 17))
    losses = []
    for _ in range(15):
        _, loss = model(data[:, :-1], data[:, 1:])
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    model.eval()
    tokens = torch.randint(0, 300, (1, 16))
    cache = model.new_cache(1)
    prefix, _ = model(tokens[:, :10], cache=cache)
    for position in range(10, 16):
        logits, _ = model(tokens[:, position : position + 1], cache=cache)
        full, _ = model(tokens[:, : position + 1])
        torch.testing.assert_close(logits[0, -1], full[0, -1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(prefix, model(tokens[:, :10])[0], atol=1e-5, rtol=1e-5)


def test_a_rotary_cache_rolls_past_the_context_one_token_at_a_time():
    # One layer: a rolled cache holds exactly the last 16 positions' keys and values, as a fresh forward
    # over the last 16 tokens computes them. (With more layers a rolled key also carries the context its
    # position saw, as in sliding-window attention, so deeper layers differ from a fresh window.)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**SHAPE, "n_layer": 1}, **{**ALL_ON, "zero_init": False})).eval()
    tokens = torch.randint(0, 300, (1, 70))
    cache = model.new_cache(1)
    model(tokens[:, :16], cache=cache)
    for position in range(16, 70):
        logits, _ = model(tokens[:, position : position + 1], cache=cache)
        window, _ = model(tokens[:, position - 15 : position + 1])
        torch.testing.assert_close(logits[0, -1], window[0, -1], atol=1e-4, rtol=1e-4)
    assert cache.length == 70
    deep = small_gpt(**ALL_ON)
    greedy = Sampling(temperature=0)
    first = list(generate_tokens(deep, [1, 2, 3], 60, greedy, torch.Generator(), use_cache=True))
    again = list(generate_tokens(deep, [1, 2, 3], 60, greedy, torch.Generator(), use_cache=True))
    uncached = list(generate_tokens(deep, [1, 2, 3], 60, greedy, torch.Generator(), use_cache=False))
    assert first == again and len(first) == 60
    assert first[:13] == uncached[:13]  # the same text while the context holds it all


def test_learned_positions_cannot_run_past_the_context():
    model = small_gpt()
    cache = model.new_cache(1)
    model(torch.zeros(1, 16, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="longer than block_size 16"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_flops_count_the_matmuls_each_option_adds_or_removes():
    base = small_gpt()
    attention = 12 * 3 * 64 * 16
    assert base.flops_per_token() == 6 * (base.num_parameters() - 16 * 64) + attention  # wpe is a lookup
    rope = small_gpt(position="rope")
    assert rope.flops_per_token() == 6 * rope.num_parameters() + attention  # no position table at all
    untied = small_gpt(tie_embeddings=False)  # the head is a matmul, the embedding a lookup
    assert untied.flops_per_token() == base.flops_per_token()
    values = small_gpt(value_embeddings=True)  # two more tables (layers 0 and 2), looked up: no FLOPs, but weights
    assert values.flops_per_token() == base.flops_per_token() + 6 * 2
    assert values.num_parameters() == base.num_parameters() + 2 * 320 * 64 + 2
    swiglu = small_gpt(activation="swiglu")
    assert swiglu.config.mlp_hidden == 192 and swiglu.flops_per_token() > base.flops_per_token()


def test_zero_init_and_untied_head_start_where_they_should():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE, **ALL_ON))
    assert not model.lm_head.weight.any() and model.lm_head.weight is not model.wte.weight
    assert all(not p.any() for name, p in model.named_parameters() if name.endswith("proj.weight"))
    logits, _ = model(torch.randint(0, 300, (1, 8)))
    assert not logits.any()  # a zero head: uniform predictions, loss log(vocab)


def test_soft_capping_bounds_the_logits():
    model = small_gpt(logit_softcap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)
    logits, _ = model(torch.randint(0, 300, (1, 8)))
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9


def test_a_checkpoint_from_before_the_layout_keys_builds_gpt2():
    shape_only = dict(SHAPE, dropout=0.0, bias=False)
    config = GPTConfig(**shape_only)
    assert (config.position, config.norm, config.activation, config.tie_embeddings) == (
        "learned",
        "layernorm",
        "gelu",
        True,
    )
    weights = GPT(config).state_dict()
    assert (
        checkpoint_problem(
            {"model_state_dict": weights, "model_config": shape_only}, ("model_state_dict", "model_config")
        )
        is None
    )
    modern = dataclasses.asdict(GPTConfig(**SHAPE, **ALL_ON))
    state = {"model_state_dict": GPT(GPTConfig(**SHAPE, **ALL_ON)).state_dict(), "model_config": modern}
    assert checkpoint_problem(state, ("model_state_dict", "model_config")) is None
    for key, bad in [("position", "alibi"), ("qk_norm", "yes"), ("logit_softcap", math.inf), ("activation", 3)]:
        problem = checkpoint_problem(
            {**state, "model_config": {**modern, key: bad}}, ("model_state_dict", "model_config")
        )
        assert problem and key in problem
