"""model=auto's rules on fixed inputs: a machine's speed, a corpus's figures and a budget in, a shape out."""

from __future__ import annotations

import pytest

from fragment_llm.plan.law import LAW
from fragment_llm.plan.rules import (
    Corpus,
    Shape,
    Speed,
    candidates,
    choose,
    outcome,
)

# A 2-core CPU as the sweeps' machine measured itself (one thread), and the bundled corpus and a 10 MB one.
CPU = Speed(fixed=0.004, per_layer=0.003, per_flop=1.7e-11)
SMALL = Corpus(train_bytes=420_000, train_tokens=147_000, bigram_bpb=2.34)
LARGE = Corpus(train_bytes=10_900_000, train_tokens=4_190_000, bigram_bpb=1.85)


def test_params_match_the_model_the_trainer_builds():
    from fragment_llm.model.gpt import GPT, GPTConfig

    shape = Shape(n_layer=3, n_embd=96, n_head=3, block_size=128, vocab_size=1024, batch_size=8)
    model = GPT(
        GPTConfig(
            vocab_size=1024,
            block_size=128,
            n_layer=3,
            n_head=3,
            n_embd=96,
            position="rope",
            activation="relu2",
            value_embeddings=True,
        )
    )
    counted = sum(p.numel() for p in model.parameters())
    assert abs(counted - shape.params) / counted < 0.01  # norms and scalars are the rest


def test_speed_fit_recovers_a_known_machine():
    shapes = [Shape(depth, w, w // 32, 128, 1024, 8) for depth, w in [(1, 64), (4, 64), (4, 128), (2, 256), (6, 256)]]
    timed = [(shape, CPU.seconds_per_step(shape)) for shape in shapes]
    fitted = Speed.fitted(timed)
    for shape in shapes:
        assert fitted.seconds_per_step(shape) == pytest.approx(CPU.seconds_per_step(shape), rel=1e-6)


def test_speed_fit_drops_a_negative_term():
    shapes = [Shape(depth, 128, 4, 128, 1024, 8) for depth in (1, 2, 4)]
    noisy = [(shapes[0], 0.010), (shapes[1], 0.011), (shapes[2], 0.009)]  # slower for fewer layers: noise
    fitted = Speed.fitted(noisy)
    assert min(fitted.fixed, fitted.per_layer, fitted.per_flop) >= 0


def test_a_longer_budget_chooses_a_larger_model():
    short = choose({}, {1024: LARGE}, CPU, 60)
    long = choose({}, {1024: LARGE}, CPU, 1200)
    assert long.shape.block_params >= short.shape.block_params
    assert long.tokens > short.tokens


def test_the_chosen_shape_is_the_best_candidate_the_law_predicts():
    chosen = choose({}, {2048: LARGE}, CPU, 300)
    for shape in candidates({}, 2048):
        assert outcome(shape, CPU, 300, LARGE).bpb >= chosen.bpb


def test_keys_the_user_set_stay_as_set():
    chosen = choose({"n_layer": 6, "batch_size": 4}, {1024: SMALL}, CPU, 300)
    assert chosen.shape.n_layer == 6 and chosen.shape.batch_size == 4
    wide = choose({"n_embd": 256}, {1024: SMALL}, CPU, 300)
    assert wide.shape.n_embd == 256 and wide.shape.n_head == 8


def test_a_budget_shorter_than_any_step_has_no_choice():
    with pytest.raises(ValueError):
        choose({}, {1024: SMALL}, CPU, 0.001)


def test_steps_tokens_and_epochs_follow_the_speed():
    shape = Shape(4, 128, 4, 128, 1024, 8)
    result = outcome(shape, CPU, 300, SMALL)
    assert result.steps == int(300 * (1 - 0.04) / CPU.seconds_per_step(shape))
    assert result.tokens == result.steps * 1024
    assert result.epochs == pytest.approx(result.tokens / SMALL.train_tokens)
    assert result.low < result.bpb < result.high or LAW.spread == 0


def test_a_step_counted_run_takes_its_steps():
    result = outcome(Shape(4, 128, 4, 128, 1024, 8), CPU, float("inf"), SMALL, steps=40)
    assert result.steps == 40 and result.seconds < 10


def test_the_vocabulary_is_chosen_with_the_shape():
    """Each vocabulary tokenizes the corpus its own way (more bytes a token, fewer tokens): the choice is
    the best of every vocabulary's candidates."""
    corpora = {
        1024: LARGE,
        4096: Corpus(train_bytes=LARGE.train_bytes, train_tokens=2_900_000, bigram_bpb=LARGE.bigram_bpb),
    }
    chosen = choose({}, corpora, CPU, 300)
    best = min(
        (outcome(shape, CPU, 300, corpora[v]) for v in corpora for shape in candidates({}, v)), key=lambda o: o.bpb
    )
    assert chosen == best
    assert choose({}, {4096: corpora[4096]}, CPU, 300).shape.vocab_size == 4096


def test_weight_decay_is_light_for_a_few_epochs_and_strong_for_many():
    from fragment_llm.plan.rules import weight_decay_for

    assert weight_decay_for(2.5) == weight_decay_for(7.9) == 0.1
    assert weight_decay_for(8) == weight_decay_for(21) == 1.0


def test_a_corpus_too_small_for_any_shape_by_its_bytes_still_gets_the_smallest():
    """The cap of 2 block weights per byte never leaves no shape: 12 KB of text gets two layers 64 wide
    (the sweeps' smallest), not a budget called too short."""
    tiny = Corpus(train_bytes=12_000, train_tokens=4_000, bigram_bpb=2.3)
    chosen = choose({}, {1024: tiny}, CPU, 300)
    assert (chosen.shape.n_layer, chosen.shape.n_embd) == (2, 64)
    small = choose({}, {1024: SMALL}, CPU, 300)  # 420 KB: the cap, not the floor
    assert small.shape.block_params <= 2 * SMALL.train_bytes


def test_auto_chooses_no_single_layer_but_keeps_one_the_user_sets():
    # No sweep trained one layer, and the law, blind to depth at equal weights, chose 1 x 256 for the
    # bundled corpus on two threads: it reached 1.861 bits per byte, where 4 x 128 reached 1.583.
    assert min(shape.n_layer for shape in candidates({}, 1024)) == 2
    assert {shape.n_layer for shape in candidates({"n_layer": 1}, 1024)} == {1}
