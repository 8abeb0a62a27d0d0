"""Words for what messages count and time (text.py): one in the singular, in the runs table and the sweep
report too; durations to the second."""

from __future__ import annotations

from helpers import call, write_run

from fragment_llm.runs.tables import write_sweep_report


def test_counts_say_one_in_the_singular(tmp_path, monkeypatch, capsys):
    from fragment_llm.text import plural

    assert [plural(count, "epoch") for count in (0, 1, 2, 1.5)] == ["0 epochs", "1 epoch", "2 epochs", "1.5 epochs"]
    sweep = tmp_path / "sweep"
    for job, lr in enumerate(("0.001", "0.003")):
        write_run(sweep / str(job), [f"optimizer.lr={lr}", "model.n_layer=1"], {"status": "completed", "steps": 6})
    monkeypatch.setenv("COLUMNS", "80")
    write_sweep_report(sweep)
    assert "Not shown: the 1 override every job shares" in capsys.readouterr().out
    code, out, _ = call(["runs", sweep / "0"], capsys)
    assert code == 0 and "(1 run)" in " ".join(out.split())


def test_durations_read_to_the_second_up_to_an_hour():
    from fragment_llm.text import duration

    cases = {4.5: "4.5s", 59.4: "59.4s", 60: "1m 00s", 90: "1m 30s", 3599.6: "1h 00m", 5400: "1h 30m", 90000: "25h 00m"}
    assert {seconds: duration(seconds) for seconds in cases} == cases
