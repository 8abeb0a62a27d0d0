"""GGUF export (export/gguf.py, `fragment-llm export RUN --format gguf`): one file for llama.cpp with the
weights, the tokenizer and the chat template, for GPT-2's, Llama's and Qwen3's layouts, checked by loading it
back in transformers (`gguf_file=`) with our logits and our token ids; any other layout is one error line."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, assert_one_error_line, call, train_tiny_run

from fragment_llm.data.chat import chat_ids
from fragment_llm.data.tokenizer import text_ids
from fragment_llm.train.from_run import load_run

from .test_hf import LLAMA, tiny_model

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers reads GGUF files only with it

# Conversations whose ids transformers must give exactly as ours: a system prompt, several turns, unicode.
CONVERSATIONS = [
    [{"role": "user", "content": "What does the import statement do?"}],
    [
        {"role": "system", "content": "You answer from the Python documentation, briefly."},
        {"role": "user", "content": "What is a generator?"},
        {"role": "assistant", "content": "A function that yields values,\none at a time."},
        {"role": "user", "content": "  And a coroutine?  "},
    ],
    [
        {"role": "user", "content": "Grüße, naïve café: 日本語 and emoji 🐍 too"},
        {"role": "assistant", "content": "Ünïcödé ok — “quotes” and tabs\there."},
    ],
]

# The layouts llama.cpp has, with the transformers class that reads each back from GGUF.
LAYOUTS = {
    "gpt2": ({}, "GPT2LMHeadModel"),
    "gpt2 untied with biases": ({"bias": True, "tie_embeddings": False}, "GPT2LMHeadModel"),
    "llama": (LLAMA, "LlamaForCausalLM"),
    "llama untied": ({**LLAMA, "tie_embeddings": False}, "LlamaForCausalLM"),
    "qwen3": ({**LLAMA, "qk_norm": True}, "Qwen3ForCausalLM"),
}


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, corpus):
    """A tiny run of GPT-2's layout (trained_run has the default, modern layout, which GGUF cannot hold)."""
    return train_tiny_run(tmp_path_factory.mktemp("gpt2"), corpus, arch="gpt2", **{"model.vocab_size": 500})


def load_gguf(path, model_config, **changes):
    """transformers' model from our GGUF file. transformers 5 reads neither a GPT-2 file's context length
    into `n_positions` nor a Qwen3 file's head size (`attention.key_length`): both are passed, as the
    README says a user must."""
    if model_config.position == "learned":
        shape = {"n_positions": model_config.block_size}
    else:
        shape = {"head_dim": model_config.head_size} if model_config.qk_norm else {}
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, local_files_only=True, **shape, **changes
    ).eval()


def test_a_gpt2_run_exports_to_gguf_with_our_logits_tokens_and_chat_template(gpt2_run, tmp_path, capsys):
    out = tmp_path / "model.gguf"
    code, printed, err = call(["export", gpt2_run, "--format", "gguf", "--out", out], capsys)
    assert code == 0, err
    assert f"to {out} as GGUF (llama.cpp's gpt2 architecture)" in printed
    trained = load_run(gpt2_run)
    vocab = trained.config.vocab_size
    text = "The import statement is executed in two steps: find a module, then bind a name."
    ids = text_ids(trained.tokenizer, [text])[0]
    with torch.no_grad():
        ours = trained.model(torch.tensor([ids]))[0][..., :vocab]
        # Read with the exact GELU we train with, the weights give our logits; as the file says (GPT-2's
        # GELU, the tanh approximation, which llama.cpp computes too) they differ by far less than a nat.
        exact = load_gguf(out, trained.config, activation_function="gelu")(torch.tensor([ids])).logits
        approximate = load_gguf(out, trained.config)(torch.tensor([ids])).logits
    assert exact.shape == (1, len(ids), vocab)
    torch.testing.assert_close(exact, ours, atol=1e-4, rtol=1e-4)
    assert 0 < (approximate - ours).abs().max() < 0.05

    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name, local_files_only=True)
    assert tokenizer(text)["input_ids"] == ids
    assert tokenizer.decode(ids) == text
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|endoftext|>", "<|end|>")
    for messages in CONVERSATIONS:
        for prompt in (True, False):
            theirs = tokenizer.apply_chat_template(messages, add_generation_prompt=prompt)["input_ids"]
            assert theirs == chat_ids(trained.tokenizer, messages, prompt)[0]


def test_a_message_spelling_a_role_token_gets_the_token_unless_sanitized(gpt2_run, tmp_path, capsys):
    """As llama.cpp (which tokenizes a rendered chat with its special tokens matched), transformers reads a
    message's `<|user|>` as the role token; with `sanitize_control_tokens=True`, as text, exactly as ours."""
    out = tmp_path / "model.gguf"
    assert call(["export", gpt2_run, "--format", "gguf", "--out", out], capsys)[0] == 0
    trained = load_run(gpt2_run)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name, local_files_only=True)
    messages = [{"role": "user", "content": "say <|user|> or <|endoftext|>"}]
    ours = chat_ids(trained.tokenizer, messages, True)[0]
    assert (
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, sanitize_control_tokens=True)["input_ids"]
        == ours
    )
    matched = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    user, end_of_text = trained.tokenizer.token_to_id("<|user|>"), trained.tokenizer.token_to_id("<|endoftext|>")
    assert matched.count(user) == 2 and matched.count(end_of_text) == 2 and matched != ours


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_gguf_layout_loads_in_transformers_with_our_logits(name, trained_run, tmp_path):
    from fragment_llm.export.gguf import export_gguf

    layout, architecture = LAYOUTS[name]
    trained = load_run(trained_run)
    vocab = trained.config.vocab_size
    model = tiny_model(vocab, **layout)
    out = tmp_path / "model.gguf"
    assert export_gguf(model, trained.tokenizer, out, "tiny") in architecture.lower()
    hf = load_gguf(out, model.config, **({"activation_function": "gelu"} if "GPT2" in architecture else {}))
    assert type(hf).__name__ == architecture
    ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
    torch.testing.assert_close(theirs, ours[..., :vocab], atol=1e-4, rtol=1e-4)


def test_the_gguf_file_holds_the_tokenizer_and_the_chat_template(gpt2_run, tmp_path, capsys):
    from fragment_llm.data.chat import JINJA_TEMPLATE

    out = tmp_path / "model.gguf"
    assert call(["export", gpt2_run, "--format", "gguf", "--out", out], capsys)[0] == 0
    trained = load_run(gpt2_run)
    reader = gguf.GGUFReader(out)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "gpt2"
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens[:5] == ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert len(tokens) == trained.config.vocab_size
    assert fields["tokenizer.ggml.token_type"][:6] == [gguf.TokenType.CONTROL] * 5 + [gguf.TokenType.NORMAL]
    assert fields["tokenizer.ggml.bos_token_id"] == 0 and fields["tokenizer.ggml.eos_token_id"] == 4
    assert fields["tokenizer.ggml.eot_token_id"] == 4 and fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == JINJA_TEMPLATE
    assert fields["gpt2.context_length"] == trained.config.block_size
    assert reader.get_tensor(0).tensor_type == gguf.GGMLQuantizationType.F32


def test_a_layout_llama_cpp_lacks_is_one_error_line_naming_those_it_has(trained_run, tmp_path, capsys):
    out = tmp_path / "model.gguf"
    code, _, err = call(["export", trained_run, "--format", "gguf", "--out", out], capsys)
    assert_one_error_line(code, err, "gpt2 (arch=gpt2)", "llama (arch=llama)", "--format hf")
    assert list(tmp_path.iterdir()) == []


def test_a_gguf_export_writes_one_file_outside_runs_replacing_one_only_with_force(gpt2_run, tmp_path, capsys):
    code, _, err = call(["export", gpt2_run, "--format", "gguf", "--out", tmp_path], capsys)
    assert_one_error_line(code, err, f"--out {tmp_path} is a folder", f"--out {tmp_path / 'model.gguf'}")
    code, _, err = call(["export", gpt2_run, "--format", "gguf", "--out", gpt2_run / "model.gguf"], capsys)
    assert_one_error_line(code, err, "inside the run directory")
    out = tmp_path / "model.gguf"
    out.write_bytes(b"mine")
    code, _, err = call(["export", gpt2_run, "--format", "gguf", "--out", out], capsys)
    assert_one_error_line(code, err, f"--out {out} exists; pass --force")
    assert out.read_bytes() == b"mine"
    assert call(["export", gpt2_run, "--format", "gguf", "--out", out, "--force"], capsys)[0] == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert [path.name for path in tmp_path.iterdir()] == ["model.gguf"]  # no temporary file left


def test_without_the_gguf_package_the_export_names_the_extra(gpt2_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "fragment_llm.export.gguf", raising=False)
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` fails as if it were not installed
    code, _, err = call(["export", gpt2_run, "--format", "gguf", "--out", tmp_path / "model.gguf"], capsys)
    assert_one_error_line(code, err, "needs the gguf package; pip install 'fragment-llm[gguf]'")


@pytest.mark.slow
def test_a_gguf_export_onto_a_full_disk_is_one_error_line_and_leaves_nothing(gpt2_run, tmp_path):
    def full_disk():  # files stop growing at 20 kB (Python ignores SIGXFSZ: writes fail with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "model.gguf"
    command = [sys.executable, "-m", "fragment_llm", "export", str(gpt2_run), "--format", "gguf", "--out", str(out)]
    result = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), preexec_fn=full_disk
    )
    assert_one_error_line(result.returncode, result.stderr, f"could not export to {out}: ", "File too large")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layout", ["gpt2", "llama"])
def test_llama_cpp_itself_reads_the_file_with_our_logits_ids_and_ends_of_turn(layout, gpt2_run, tmp_path, capsys):
    """In llama.cpp (through llama-cpp-python, where it is installed: it builds llama.cpp from source). Its
    float32 kernels and GPT-2's tanh GELU leave differences of thousandths in the logits."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from fragment_llm.export.gguf import export_gguf

    trained = load_run(gpt2_run)
    model = trained.model if layout == "gpt2" else tiny_model(trained.config.vocab_size, **LLAMA)
    out = tmp_path / "model.gguf"
    assert export_gguf(model, trained.tokenizer, out, "tiny") == layout
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=model.config.block_size, logits_all=True, verbose=False)
    text = "Grüße: the import statement is executed in two steps.\n\n  Lists are sequences"
    ids = text_ids(trained.tokenizer, [text])[0]
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
    rendered = transformers.AutoTokenizer.from_pretrained(
        tmp_path, gguf_file=out.name, local_files_only=True
    ).apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True, tokenize=False)
    expected = chat_ids(trained.tokenizer, CONVERSATIONS[1], True)[0]
    assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == expected
    vocabulary = llama_cpp.llama_model_get_vocab(llm.model)
    assert [token for token in range(5) if llama_cpp.llama_vocab_is_eog(vocabulary, token)] == [0, 4]
    ids = ids[: model.config.block_size]
    llm.eval(ids)
    theirs = torch.tensor(llm.scores[: len(ids)])
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0, :, : trained.config.vocab_size]
    assert (theirs - ours).abs().max() < 0.05 and torch.equal(theirs.argmax(-1), ours.argmax(-1))


def test_only_the_layouts_llama_cpp_computes_and_that_transformers_reads_back_export():
    from fragment_llm.export.gguf import gguf_architecture

    def architecture(**layout):
        return gguf_architecture(tiny_model(500, **layout))

    assert [architecture(), architecture(bias=True, tie_embeddings=False)] == ["gpt2", "gpt2"]
    assert [architecture(**LLAMA), architecture(**LLAMA, qk_norm=True)] == ["llama", "qwen3"]
    assert architecture(activation="relu2") is None  # llama.cpp's GPT-2 has only GELU
    assert architecture(**LLAMA, bias=True) is None  # transformers' GGUF reader drops Llama's biases
    assert architecture(position="rope", activation="relu2", value_embeddings=True) is None  # arch=modern
