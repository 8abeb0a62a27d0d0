"""`fragment-llm` on damaged runs, odd values and hostile input: every failure is one `error: ...`
line and a non-zero exit, never a traceback, and nothing a user made is lost."""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from fragment_llm.commands.main import main
from fragment_llm.export.hf import WEIGHTS_FILE, export_hf
from fragment_llm.model.generate import Sampling, SamplingError, sample_next
from fragment_llm.runs.records import update_summary
from fragment_llm.train.from_run import load_run

RECORDS = {
    ".hydra/config.yaml": "model:\n  n_embd: 64\noptimizer:\n  lr: 0.003\n",
    ".hydra/overrides.yaml": "- model.n_embd=64\n",
    ".hydra/hydra.yaml": "hydra:\n  runtime:\n    choices:\n      model: tiny\n      hardware: cpu\n",
}
DAMAGES = {
    "truncated json": b'{"status": "compl',
    "json list": b"[1, 2]",
    "binary": b"\xff\xfe\x00\x01junk",
    "empty": b"",
    "truncated yaml": b"model: [1, 2",
    "yaml list": b"- a\n- b\n",
    "yaml mapping": b"a: b\n",
    "a directory": None,
}
DAMAGED_FILES = [
    ("summary.json", "truncated json"),
    ("summary.json", "json list"),
    ("summary.json", "binary"),
    ("summary.json", "empty"),
    ("summary.json", "a directory"),
    (".hydra/config.yaml", "truncated yaml"),
    (".hydra/config.yaml", "yaml list"),
    (".hydra/config.yaml", "binary"),
    (".hydra/config.yaml", "a directory"),
    (".hydra/overrides.yaml", "yaml mapping"),
    (".hydra/overrides.yaml", "truncated yaml"),
    (".hydra/hydra.yaml", "binary"),
    (".hydra/hydra.yaml", "a directory"),
]


def copy_run(trained_run, folder, name="run"):
    """A copy of the trained run with Hydra's records, as `run.py` leaves them."""
    copy = folder / name
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("tensorboard", "checkpoints"))
    for record, text in RECORDS.items():
        (copy / record).parent.mkdir(exist_ok=True)
        (copy / record).write_text(text)
    return copy


def damage(path, kind):
    path.unlink()
    if DAMAGES[kind] is None:
        path.mkdir()
    else:
        path.write_bytes(DAMAGES[kind])


def call(argv, capsys):
    """main(argv) in this process: its exit code, standard output and standard error."""
    try:
        code = main([str(word) for word in argv])
    except SystemExit as exit:  # argparse's errors exit from inside parse_args
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code, err, *needles):
    assert code != 0
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert str(needle) in err, err


@pytest.mark.parametrize("name,kind", DAMAGED_FILES, ids=[f"{name}-{kind}" for name, kind in DAMAGED_FILES])
def test_a_damaged_run_is_listed_as_damaged_beside_the_others(name, kind, trained_run, tmp_path, capsys):
    good, bad = copy_run(trained_run, tmp_path, "good"), copy_run(trained_run, tmp_path, "bad")
    damage(bad / name, kind)

    code, out, err = call(["runs", tmp_path, "--json"], capsys)
    assert code == 0 and not err
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["good"]["status"] == "completed" and rows["good"]["damaged"] is None
    assert rows["bad"]["status"] == "damaged" and rows["bad"]["damaged"].startswith(f"{name}: ")

    code, out, err = call(["runs", tmp_path, "--sort", "best_val_loss"], capsys)
    assert code == 0 and "Runs in" in out, err
    code, out, err = call(["runs", tmp_path, "--filter", "status=damaged", "--sort", "started_at", "--json"], capsys)
    assert code == 0 and [row["name"] for row in json.loads(out)] == ["bad"], err

    for argv in (["show", bad], ["compare", good, bad]):
        code, out, err = call(argv, capsys)
        assert code == 0 and "Metrics" in out
        assert err.startswith(f"warning: {bad} is damaged") and err.count("\n") == 1 and name in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_summary_is_damaged(trained_run, tmp_path, capsys):
    run = copy_run(trained_run, tmp_path)
    (run / "summary.json").chmod(0)
    code, out, _ = call(["runs", tmp_path, "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["damaged"] == "summary.json: Permission denied"


@pytest.mark.parametrize("kind", ["truncated json", "json list", "binary"])
def test_training_replaces_a_damaged_summary_instead_of_failing(kind, trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    damage(run / "summary.json", kind)
    assert update_summary(run, status="failed") == {"status": "failed"}
    assert json.loads((run / "summary.json").read_text()) == {"status": "failed"}


ODD_VALUES = {
    "best_val_loss": {"not": "a number"},
    "started_at": 5,
    "wall_time_s": "long",
    "steps": 10**400,
    "tokens": None,
    "status": ["a", "list"],
    "val_bpb": float("nan"),
}


@pytest.mark.parametrize("key", [*ODD_VALUES, "model.n_embd"])
def test_sorting_and_filtering_take_values_of_any_type(key, trained_run, tmp_path, capsys):
    copy_run(trained_run, tmp_path, "plain")
    odd = copy_run(trained_run, tmp_path, "odd")
    summary = json.loads((odd / "summary.json").read_text())
    (odd / "summary.json").write_text(json.dumps({**summary, **ODD_VALUES}))
    code, out, err = call(["runs", tmp_path, "--sort", key], capsys)
    assert code == 0 and "Runs in" in out, err
    code, out, err = call(["runs", tmp_path, "--sort", key, "--reverse", "--json"], capsys)
    assert code == 0 and {row["name"] for row in json.loads(out)} == {"plain", "odd"}, err
    code, out, err = call(["runs", tmp_path, "--filter", f"{key}=1e999"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324])
def test_a_tiny_temperature_is_greedy(temperature):
    logits = torch.tensor([3e38, -3e38, 3.3e38, 3.2e38])  # float32 logits over a tiny temperature overflow
    generator = torch.Generator().manual_seed(0)
    assert {sample_next(logits, Sampling(temperature, top_k=0), generator) for _ in range(20)} == {2}
    assert {sample_next(logits, Sampling(temperature, top_k=10**9, top_p=1e-300), generator) for _ in range(20)} == {2}


def test_infinite_logits_are_certain_and_nan_logits_an_error():
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, torch.inf, 5.0, torch.inf, -torch.inf])
    assert {sample_next(logits, Sampling(1.0, top_k=0), generator) for _ in range(50)} == {1, 3}
    assert sample_next(logits, Sampling(0.0), generator) == 1
    for broken in ([0.0, torch.nan], [-torch.inf, -torch.inf]):
        with pytest.raises(SamplingError, match="damaged or diverged"):
            sample_next(torch.tensor(broken), Sampling(1.0), generator)


def test_generate_with_a_tiny_temperature_writes_the_greedy_text(trained_run, capsys):
    command = ["generate", trained_run, "--prompt", "The", "--max-new-tokens", "30", "--top-k", "100000"]
    greedy = call([*command, "--temperature", "0"], capsys)
    assert greedy[0] == 0 and len(greedy[1]) > len("The\n")
    assert call([*command, "--temperature", "1e-40", "--top-p", "1e-300"], capsys) == greedy


def test_a_model_with_nan_weights_is_one_error_line(trained_run, tmp_path, capsys):
    state = torch.load(trained_run / "models" / "final_model.pt", weights_only=True)
    state["model_state_dict"]["ln_f.weight"].fill_(torch.nan)
    torch.save(state, tmp_path / "nan.pt")
    code, _, err = call(["generate", trained_run, "--checkpoint", tmp_path / "nan.pt", "--prompt", "The"], capsys)
    assert_one_error_line(code, err, "logits are NaN")


TOKENIZER_DAMAGES = ["truncated", "not json", "json, not a tokenizer", "json list", "a directory", "no end of text"]


@pytest.mark.parametrize("kind", TOKENIZER_DAMAGES)
def test_a_damaged_tokenizer_is_one_error_line(kind, trained_run, tmp_path, capsys):
    from tokenizers import Tokenizer, models

    run = copy_run(trained_run, tmp_path)
    path = run / "tokenizer.json"
    text = path.read_text()
    path.unlink()
    contents = {
        "truncated": text[: len(text) // 2],
        "not json": "tokenizer",
        "json list": "[]",
        "json, not a tokenizer": '{"version": "1.0"}',
        "no end of text": Tokenizer(models.BPE()).to_str(),
    }
    if kind == "a directory":
        path.mkdir()
    else:
        path.write_text(contents[kind])
    code, _, err = call(["generate", run, "--prompt", "The"], capsys)
    assert_one_error_line(code, err, f"{path} is damaged or not a tokenizer: ")


def checkpoint_variants(state):
    config, weights = state["model_config"], state["model_state_dict"]
    return {
        "a list": [1, 2],
        "an empty dict": {},
        "no weights": {"model_config": config},
        "huge vocabulary": {**state, "model_config": {**config, "vocab_size": 2 * 10**9}},
        "vocabulary beyond its weights": {**state, "model_config": {**config, "vocab_size": 100_000}},
        "an unknown key": {**state, "model_config": {**config, "colour": "blue"}},
        "a text value": {**state, "model_config": {**config, "n_layer": "one"}},
        "a shape mismatch": {**state, "model_config": {**config, "vocab_size": 1024}},
        "a missing weight": {**state, "model_state_dict": {k: v for k, v in weights.items() if k != "ln_f.weight"}},
        "weights not tensors": {**state, "model_state_dict": {k: "x" for k in weights}},
    }


@pytest.mark.parametrize(
    "kind",
    ["a directory", "missing", "not a checkpoint", *checkpoint_variants({"model_config": {}, "model_state_dict": {}})],
)
def test_a_bad_checkpoint_is_one_error_line(kind, trained_run, tmp_path, capsys):
    state = torch.load(trained_run / "models" / "final_model.pt", weights_only=True)
    path = tmp_path / "checkpoint.pt"
    if kind == "a directory":
        path.mkdir()
    elif kind == "not a checkpoint":
        path.write_bytes(b"\x80\x04junk" * 100)
    elif kind != "missing":
        torch.save(checkpoint_variants(state)[kind], path)
    code, _, err = call(["generate", trained_run, "--checkpoint", path, "--prompt", "The"], capsys)
    assert_one_error_line(code, err, path)
    if kind == "a directory":
        assert "is a directory; pass a .pt file" in err


@pytest.mark.parametrize("contents", [b"\xff\xfe\x00\x01" * 50, b"", None], ids=["binary", "empty", "no text files"])
def test_eval_on_data_that_is_not_text_is_one_error_line(contents, trained_run, tmp_path, capsys):
    data = tmp_path / "data.txt"
    if contents is None:
        data.mkdir()
    else:
        data.write_bytes(contents)
    code, _, err = call(["eval", trained_run, "--data", data], capsys)
    assert_one_error_line(code, err, data.name)


def test_a_prompt_that_is_not_text_is_one_error_line(trained_run, monkeypatch, capsys):
    code, _, err = call(["generate", trained_run, "--prompt", "\udcff"], capsys)  # a byte that is not UTF-8, from argv
    assert_one_error_line(code, err, "--prompt is not UTF-8 text")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\xff\xfe"), encoding="utf-8"))
    code, _, err = call(["generate", trained_run], capsys)
    assert_one_error_line(code, err, "standard input is not UTF-8 text")


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        torch.OutOfMemoryError("CUDA out of memory"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate"),
    ],
)
def test_out_of_memory_is_one_error_line(error, trained_run, monkeypatch, capsys):
    def exhausted(*args, **kwargs):
        raise error

    monkeypatch.setattr("fragment_llm.model.evaluate.evaluate_documents", exhausted)
    code, _, err = call(["eval", trained_run, "--data", trained_run / "train.log"], capsys)
    assert_one_error_line(code, err, "out of memory")


def test_other_runtime_errors_are_not_taken_for_out_of_memory(trained_run, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("fragment_llm.model.evaluate.evaluate_documents", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["eval", str(trained_run), "--data", str(trained_run / "train.log")])


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


def test_an_interrupted_export_leaves_the_old_files_whole(trained_run, tmp_path, monkeypatch):
    out = tmp_path / "exported"
    out.mkdir()
    (out / WEIGHTS_FILE).write_bytes(b"an old export")

    def interrupted(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr("fragment_llm.export.hf.save_file", interrupted)
    trained = load_run(trained_run)
    with pytest.raises(KeyboardInterrupt):
        export_hf(trained.model, trained.tokenizer, trained.tokenizer_path, out)
    assert [path.name for path in out.iterdir()] == [WEIGHTS_FILE]
    assert (out / WEIGHTS_FILE).read_bytes() == b"an old export"


def test_an_export_that_cannot_be_written_is_one_error_line(trained_run, tmp_path, capsys):
    (tmp_path / "a file").write_text("")
    out = tmp_path / "a file" / "exported"
    code, _, err = call(["export", trained_run, "--out", out], capsys)
    assert_one_error_line(code, err, f"could not export to {out}: ")


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["hf", "safetensors"])
def test_an_export_onto_a_full_disk_is_one_error_line_and_leaves_nothing(export_format, trained_run, tmp_path):
    def full_disk():  # files stop growing at 20 kB (Python ignores SIGXFSZ: writes fail with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "exported"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fragment_llm",
            "export",
            str(trained_run),
            "--format",
            export_format,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=full_disk,
    )
    assert_one_error_line(result.returncode, result.stderr, f"could not export to {out}: ", "File too large")
    assert list(out.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["runs", "{root}"], ["runs", "{root}", "--json"], ["generate", "{run}", "--prompt", "The"]],
    ids=lambda command: " ".join(command[:3]),
)
def test_output_into_a_closed_pipe_ends_quietly(command, trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first write, as after `| head -1` has its line
    argv = [word.format(root=tmp_path, run=run) for word in command]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "fragment_llm", *argv],
        stdout=writer,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    os.close(writer)
    assert result.stderr == "" and result.returncode == 1


@pytest.mark.slow
def test_generate_into_head_ends_quietly(trained_run, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        "-m",
        "fragment_llm",
        "generate",
        str(trained_run),
        "--prompt",
        "The",
        "--num-samples",
        "1000",
        "--max-new-tokens",
        "100",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    process.stdout.readline()
    process.stdout.close()  # as `head -1` does once it has its line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) in (0, 1)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
