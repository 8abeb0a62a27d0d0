"""`fragment-llm export` (commands/export.py): never into a run, replacing files only with --force and
keeping the user's own, and a folder that cannot be written is one `error:` line."""

from __future__ import annotations

from helpers import assert_one_error_line, call, copy_run

from fragment_llm.export.hf import WEIGHTS_FILE


def test_export_never_writes_into_a_run(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    for out in (run, run / "exported", run / "models"):
        code, _, err = call(["export", run, "--out", out, "--force"], capsys)
        assert_one_error_line(code, err, f"--out {out} is ", "pick a folder outside it")
    assert not (run / "exported").exists()
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


def test_export_replaces_files_only_with_force_and_keeps_the_users_own(trained_run, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / WEIGHTS_FILE).write_bytes(b"an old export")
    code, _, err = call(["export", trained_run, "--out", out], capsys)
    assert_one_error_line(code, err, f"--out {out} is not empty; pass --force")
    assert (out / WEIGHTS_FILE).read_bytes() == b"an old export"

    code, _, err = call(["export", trained_run, "--out", out, "--force"], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    from safetensors.torch import load_file

    assert any(name.endswith("wte.weight") for name in load_file(out / WEIGHTS_FILE))  # a new export, not the old bytes


def test_an_export_that_cannot_be_written_is_one_error_line(trained_run, tmp_path, capsys):
    (tmp_path / "a file").write_text("")
    out = tmp_path / "a file" / "exported"
    code, _, err = call(["export", trained_run, "--out", out], capsys)
    assert_one_error_line(code, err, f"could not export to {out}: ")
