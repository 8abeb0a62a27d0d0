"""hardware.compile=auto's rule and this machine's record (config/compiling.py): a short run stays eager,
a long one compiles, a warm Inductor cache lowers the bar; the record read back as written, warm only
while Inductor's cache is there, and a damaged record read as none."""

from __future__ import annotations

import pytest

from fragment_llm.config.compiling import (
    PRIOR,
    RECORD_FILE,
    CompileRecord,
    decide_compile,
    read_record,
    record_compile,
    shape_of,
)

MEASURED = CompileRecord(cold_seconds=40.0, warm_seconds=8.0, speedup=0.2, measured=True)
WARM = CompileRecord(cold_seconds=40.0, warm_seconds=8.0, speedup=0.2, warm=True, measured=True)
SHAPE = shape_of({"n_layer": 4, "n_embd": 128, "vocab_size": 1024}, 8, "fp32")


def test_a_short_run_stays_eager_and_says_why():
    chosen, reason = decide_compile(60, MEASURED)
    assert not chosen
    assert reason == ("a 1m 00s run; compiling costs ~40s here (cold Inductor cache) and saves ~20% of the step, ~12s")


def test_a_long_run_compiles():
    chosen, reason = decide_compile(30 * 60, MEASURED)
    assert chosen and reason.startswith("a 30m 00s run; compiling costs ~40s") and reason.endswith("~6m 00s")


def test_a_warm_cache_lowers_the_bar():
    # 100 s saves 20 s: more than a warm compile (8 s), less than a cold one (40 s).
    assert decide_compile(100, WARM)[0] and not decide_compile(100, MEASURED)[0]
    assert "(warm Inductor cache)" in decide_compile(100, WARM)[1]
    # The break-even point is the cost over the speed-up: 200 s cold, 40 s warm.
    assert not decide_compile(200, MEASURED)[0] and decide_compile(201, MEASURED)[0]
    assert not decide_compile(40, WARM)[0] and decide_compile(41, WARM)[0]


def test_without_a_record_the_prior_decides_and_says_so():
    assert decide_compile(10 * 60, None) == decide_compile(10 * 60, PRIOR)
    breaks_even = PRIOR.cold_seconds / PRIOR.speedup
    assert not decide_compile(breaks_even - 1, None)[0] and decide_compile(breaks_even + 1, None)[0]
    assert "a prior: not measured on this machine yet" in decide_compile(60, None)[1]


def test_the_record_reads_back_what_runs_measured(tmp_path, monkeypatch):
    inductor = tmp_path / "inductor"
    inductor.mkdir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor))
    cache = tmp_path / "cache"
    assert read_record(cache, "cpu: test, 2 threads", SHAPE) is None
    record_compile(cache, "cpu: test, 2 threads", SHAPE, 31.5, warm=False, speedup=0.12)
    record = read_record(cache, "cpu: test, 2 threads", SHAPE)
    assert record == CompileRecord(31.5, PRIOR.warm_seconds, 0.12, warm=True, measured=True)
    # A warm compile's seconds are the warm figure; the speed-up is the median of the runs'.
    record_compile(cache, "cpu: test, 2 threads", SHAPE, 6.0, warm=True, speedup=0.2)
    record_compile(cache, "cpu: test, 2 threads", SHAPE, 5.0, warm=True, speedup=0.1)
    assert read_record(cache, "cpu: test, 2 threads", SHAPE) == CompileRecord(31.5, 5.0, 0.12, True, True)
    # Another device or shape has no record; without Inductor's cache the shape compiles cold again.
    assert read_record(cache, "cuda: other", SHAPE) is None
    assert read_record(cache, "cpu: test, 2 threads", shape_of({"n_layer": 6}, 8, "fp32")) is None
    inductor.rmdir()
    assert read_record(cache, "cpu: test, 2 threads", SHAPE).warm is False


@pytest.mark.parametrize("content", ["{not json", '{"version": 99, "shapes": {}}', "[1, 2]"])
def test_a_damaged_or_foreign_record_is_none_and_is_rewritten(tmp_path, content):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / RECORD_FILE).write_text(content, encoding="utf-8")
    assert read_record(cache, "cpu: test", SHAPE) is None
    record_compile(cache, "cpu: test", SHAPE, 30.0, warm=False, speedup=None)
    assert read_record(cache, "cpu: test", SHAPE).cold_seconds == 30.0
