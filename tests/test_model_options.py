"""The model's layout options, alone and together: they train, they count their FLOPs, the KV cache gives
the uncached model's logits (rolling past the context with rotary positions), and bad values are one line."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import settings_for

from fragment_llm.config.schema import ConfigError
from fragment_llm.model.generate import Sampling, generate_tokens
from fragment_llm.model.gpt import GPT, GPTConfig
from fragment_llm.train.checkpoint import checkpoint_problem
from fragment_llm.train.optim import CautiousWeightDecay, build_optimizer

SHAPE = dict(vocab_size=300, block_size=16, n_layer=3, n_head=2, n_embd=64)
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


def make(**options) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE, **options))
    with torch.no_grad():  # zero-initialised weights would hide a mistake in the cached path
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.02)
    return model.eval()


@pytest.mark.parametrize("options", EACH, ids=NAMES)
def test_every_option_trains_and_its_cache_matches_the_full_forward(options):
    model = make(**options)
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
    deep = make(**ALL_ON)
    greedy = Sampling(temperature=0)
    first = list(generate_tokens(deep, [1, 2, 3], 60, greedy, torch.Generator(), use_cache=True))
    again = list(generate_tokens(deep, [1, 2, 3], 60, greedy, torch.Generator(), use_cache=True))
    uncached = list(generate_tokens(deep, [1, 2, 3], 60, greedy, torch.Generator(), use_cache=False))
    assert first == again and len(first) == 60
    assert first[:13] == uncached[:13]  # the same text while the context holds it all


def test_learned_positions_cannot_run_past_the_context():
    model = make()
    cache = model.new_cache(1)
    model(torch.zeros(1, 16, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="longer than block_size 16"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_flops_count_the_matmuls_each_option_adds_or_removes():
    base = make()
    attention = 12 * 3 * 64 * 16
    assert base.flops_per_token() == 6 * (base.num_parameters() - 16 * 64) + attention  # wpe is a lookup
    rope = make(position="rope")
    assert rope.flops_per_token() == 6 * rope.num_parameters() + attention  # no position table at all
    untied = make(tie_embeddings=False)  # the head is a matmul, the embedding a lookup
    assert untied.flops_per_token() == base.flops_per_token()
    values = make(value_embeddings=True)  # two more tables (layers 0 and 2), looked up: no FLOPs, but weights
    assert values.flops_per_token() == base.flops_per_token() + 6 * 2
    assert values.num_parameters() == base.num_parameters() + 2 * 320 * 64 + 2
    swiglu = make(activation="swiglu")
    assert swiglu.config.mlp_hidden == 192 and swiglu.flops_per_token() > base.flops_per_token()


def test_zero_init_and_untied_head_start_where_they_should():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE, **ALL_ON))
    assert not model.lm_head.weight.any() and model.lm_head.weight is not model.wte.weight
    assert all(not p.any() for name, p in model.named_parameters() if name.endswith("proj.weight"))
    logits, _ = model(torch.randint(0, 300, (1, 8)))
    assert not logits.any()  # a zero head: uniform predictions, loss log(vocab)


def test_soft_capping_bounds_the_logits():
    model = make(logit_softcap=2.0)
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.position=alibi", "model.position"),
        ("model.activation=tanh", "model.activation"),
        ("model.logit_softcap=-1", "model.logit_softcap=-1.0 is out of range"),
        ("model.n_head=64", "model.n_head=64 is out of range"),
    ],
)
def test_bad_layout_values_are_one_line(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        settings_for([override])


def test_rotary_positions_need_an_even_head_size():
    with pytest.raises(ConfigError, match="even head size"):
        settings_for(["model.n_embd=66", "model.n_head=2", "arch=modern"])
    assert settings_for(["model.n_embd=66", "model.n_head=2", "arch=gpt2"]).model.position.value == "learned"


def test_the_classic_layout_is_one_override_away():
    classic = settings_for(["arch=gpt2"]).model
    assert (classic.position.value, classic.norm.value, classic.activation.value) == ("learned", "layernorm", "gelu")
    assert classic.tie_embeddings and not classic.qk_norm and classic.logit_softcap == 0


def test_cautious_weight_decay_decays_only_weights_the_update_moves_towards_zero():
    weight = torch.nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0]))
    inner = torch.optim.SGD([{"params": [weight], "weight_decay": 0.5}], lr=0.1)
    optimizer = CautiousWeightDecay(inner)
    weight.grad = torch.tensor([1.0, -1.0, 1.0, -1.0])  # steps: -0.1, +0.1, -0.1, +0.1
    optimizer.step()
    # Coordinates 0 and 3 move towards zero, so they also decay by lr x 0.5 x weight = 0.05.
    torch.testing.assert_close(weight.detach(), torch.tensor([0.85, 1.1, -1.1, -0.85]))
    settings = settings_for(["optimizer.cautious_weight_decay=true"]).optimizer
    built = build_optimizer(make(), settings, torch.device("cpu"))
    assert isinstance(built, CautiousWeightDecay)
    assert {group["weight_decay"] for group in built.param_groups} == {0.0}
    assert {group["cautious_weight_decay"] for group in built.param_groups} == {0.0, settings.weight_decay}


def test_our_muon_steps_as_torchs_but_orthogonalises_in_fp32_on_a_cpu():
    from fragment_llm.train.optim import Muon, orthogonalise

    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(96, 32) * 0.02), torch.nn.Parameter(torch.randn(32, 64) * 0.02)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    mine = Muon(ours, lr=2e-3, weight_decay=0.1, momentum=0.95, nesterov=True)
    reference = torch.optim.Muon(
        theirs, lr=2e-3, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw"
    )
    for _ in range(3):
        for mine_p, their_p in zip(ours, theirs):
            mine_p.grad = torch.randn_like(mine_p)
            their_p.grad = mine_p.grad.clone()
        mine.step()
        reference.step()
    for mine_p, their_p in zip(ours, theirs):
        # torch's bf16 iteration differs from fp32 by its rounding: well under a step's size (lr x 0.2 sqrt(96)).
        assert (mine_p - their_p).abs().max() < 2e-4
    mine.load_state_dict(reference.state_dict())  # the same state: checkpoints of either load
    matrix = torch.randn(64, 32)
    singular = torch.linalg.svdvals(orthogonalise(matrix))
    assert orthogonalise(matrix).dtype == torch.float32 and 0.5 < singular.min() and singular.max() < 1.5
