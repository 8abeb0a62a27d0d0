"""Export (export/hf.py, export/hf_remote.py): a Hugging Face folder that transformers loads with our logits
and our greedy text, as the transformers architecture each layout is (GPT-2, Llama, Qwen3) or with our
own code (trust_remote_code); the chat template, with which transformers gives our conversations' ids, and
the ends of a turn and of a document as the eos tokens; bare safetensors; and an interrupted export leaves
the old files whole."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_model

from fragment_llm.commands.main import main
from fragment_llm.data.chat import JINJA_TEMPLATE, chat_ids
from fragment_llm.data.tokenizer import END_OF_TEXT, END_OF_TURN, byte_level_pre_tokenizer, end_of_text_id, text_ids
from fragment_llm.export.hf import WEIGHTS_FILE, export_hf, export_safetensors, hf_architecture
from fragment_llm.export.hf_remote import CONFIGURATION_FILE, MODEL_FILE, MODELING_FILE, SHAPE_FILE
from fragment_llm.model.generate import Sampling, generate_tokens
from fragment_llm.model.gpt import GPT, GPTConfig
from fragment_llm.train.from_run import load_run

LLAMA = {"position": "rope", "norm": "rmsnorm", "activation": "swiglu"}


MODERN = {
    "position": "rope",
    "norm": "rmsnorm",
    "qk_norm": True,
    "activation": "relu2",
    "tie_embeddings": False,
    "zero_init": False,
    "logit_softcap": 15.0,
    "value_embeddings": True,
    "residual_scalars": True,
    "embed_norm": True,
}


# Each layout (GPTConfig's keys beyond the shape) and the class transformers loads it as.
LAYOUTS = {
    "classic": ({}, "GPT2LMHeadModel"),
    "classic with biases": ({"bias": True}, "GPT2LMHeadModel"),
    "gpt2 relu2 untied": ({"activation": "relu2", "tie_embeddings": False}, "GPT2LMHeadModel"),
    "llama": (LLAMA, "LlamaForCausalLM"),
    "llama untied with biases": ({**LLAMA, "tie_embeddings": False, "bias": True}, "LlamaForCausalLM"),
    "qwen3": ({**LLAMA, "qk_norm": True}, "Qwen3ForCausalLM"),
    "qwen3 untied": ({**LLAMA, "qk_norm": True, "tie_embeddings": False}, "Qwen3ForCausalLM"),
    "modern": (MODERN, "FragmentForCausalLM"),
    "learned positions, tied, biases, remote": (
        {"norm": "rmsnorm", "activation": "swiglu", "embed_norm": True, "bias": True},
        "FragmentForCausalLM",
    ),
    "qk-norm with layernorm, remote": ({**LLAMA, "norm": "layernorm", "qk_norm": True}, "FragmentForCausalLM"),
}


REMOTE_FILES = {CONFIGURATION_FILE, MODELING_FILE, MODEL_FILE, SHAPE_FILE}

# Conversations whose ids transformers' apply_chat_template must give exactly as chat_ids: a system
# prompt, several turns, unicode, spaces and newlines at the edges of a message.
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
        {"role": "assistant", "content": "Ünïcödé ok — “quotes” and tabs\there.\n"},
    ],
]


def load_hf(folder, remote: bool) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, trust_remote_code=remote
    ).eval()


def hf_logits(folder, ids: torch.Tensor, remote: bool = False) -> torch.Tensor:
    with torch.no_grad():
        return load_hf(folder, remote)(ids).logits


def tiny_model(vocab_size: int, **layout) -> GPT:
    """A 2-layer model of `layout` whose every weight is random: no zero-initialised projection or head,
    and norms, scalars and value embeddings away from their initial values."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=64, **layout)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return model


def hf_greedy(model, prompt: list[int], new_tokens: int, end_of_text: int) -> list[int]:
    """transformers' greedy continuation, up to (not including) the end of a document, as ours stops (the
    export also ends generation at the end of a turn, `<|end|>`: tested on its own below)."""
    with torch.no_grad():
        output = model.generate(
            torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=end_of_text
        )
    tokens = output[0, len(prompt) :].tolist()
    return tokens[: tokens.index(end_of_text)] if end_of_text in tokens else tokens


def our_greedy(model: GPT, prompt: list[int], new_tokens: int, end_of_text: int, use_cache: bool = True) -> list[int]:
    return list(
        generate_tokens(
            model, prompt, new_tokens, Sampling(temperature=0), torch.Generator(), use_cache, stop_token=end_of_text
        )
    )


def test_transformers_loads_the_hf_export_with_our_logits_and_tokenizer(trained_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(trained_run), "--format", "hf", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "as our own code (FragmentForCausalLM, load with trust_remote_code=True)" in printed
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", *REMOTE_FILES} <= {
        path.name for path in out.iterdir()
    }
    trained = load_run(trained_run)
    text = "The import statement is executed in two steps."
    ids = trained.tokenizer.encode(text, add_special_tokens=False).ids
    # AutoTokenizer reads config.json too, so it needs trust_remote_code as well.
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True, trust_remote_code=True)
    assert tokenizer(text)["input_ids"] == ids
    assert tokenizer.decode(ids) == text
    with torch.no_grad():
        ours, _ = trained.model(torch.tensor([ids]))
    theirs = hf_logits(out, torch.tensor([ids]), remote=True)
    vocab = trained.config.vocab_size
    assert theirs.shape == (1, len(ids), vocab)
    torch.testing.assert_close(theirs, ours[..., :vocab], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_exports_as_its_architecture_with_our_logits_and_greedy_text(name, trained_run, tmp_path):
    layout, architecture = LAYOUTS[name]
    trained = load_run(trained_run)
    vocab, end_of_text = trained.config.vocab_size, end_of_text_id(trained.tokenizer)
    model = tiny_model(vocab, **layout)
    remote = architecture == "FragmentForCausalLM"
    written = export_hf(model, trained.tokenizer, trained.tokenizer_path, tmp_path)
    assert f"({architecture}" in written
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [architecture]
    assert REMOTE_FILES <= {path.name for path in tmp_path.iterdir()} or not remote

    hf = load_hf(tmp_path, remote)  # only the remote-code folder is loaded with trust_remote_code
    assert type(hf).__name__ == architecture
    ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(ids)
        theirs = hf(ids).logits
    assert theirs.shape == (2, 32, vocab)
    torch.testing.assert_close(theirs, ours[..., :vocab], atol=1e-4, rtol=1e-4)

    # 12 + 20 tokens: within the context, where every architecture continues as we do.
    prompt = torch.randint(0, vocab, (12,), generator=torch.Generator().manual_seed(2)).tolist()
    expected = our_greedy(model, prompt, 20, end_of_text)
    assert len(set(expected)) > 2  # a continuation worth comparing
    assert hf_greedy(hf, prompt, 20, end_of_text) == expected


def test_the_hf_export_carries_the_chat_template_and_ends_generation_at_a_turns_end(trained_run, tmp_path):
    trained = load_run(trained_run)
    export_hf(trained.model, trained.tokenizer, trained.tokenizer_path, tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True, trust_remote_code=True)
    assert tokenizer.chat_template == JINJA_TEMPLATE
    for messages in CONVERSATIONS:
        for prompt in (True, False):
            theirs = tokenizer.apply_chat_template(messages, add_generation_prompt=prompt)["input_ids"]
            assert theirs == chat_ids(trained.tokenizer, messages, prompt)[0]
    end, end_of_text = trained.tokenizer.token_to_id(END_OF_TURN), end_of_text_id(trained.tokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (END_OF_TEXT, END_OF_TURN, END_OF_TEXT)
    generation = transformers.GenerationConfig.from_pretrained(tmp_path, local_files_only=True)
    assert generation.eos_token_id == [end, end_of_text] and generation.pad_token_id == end_of_text
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == [end, end_of_text]

    # transformers generate stops at the end of a turn: a model made to answer `<|end|>` at once.
    model = tiny_model(trained.config.vocab_size, bias=True)
    with torch.no_grad():  # every position's last state is <|end|>'s embedding, so its logit is the largest
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(model.wte.weight[end])
    export_hf(model, trained.tokenizer, trained.tokenizer_path, tmp_path / "ends")
    hf = load_hf(tmp_path / "ends", remote=False)
    prompt = tokenizer.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True, return_tensors="pt")
    output = hf.generate(**prompt, max_new_tokens=10, do_sample=False)
    assert output[0, prompt["input_ids"].size(1) :].tolist() == [end]


def test_a_message_spelling_a_special_token_gets_it_unless_sanitized_as_ours_is(trained_run, tmp_path):
    """transformers tokenizes the rendered template with the special tokens matched, so a message's own
    `<|user|>` becomes the role token (as in llama.cpp), while chat_ids encodes it as text; transformers 5's
    `sanitize_control_tokens=True` encodes it as text, exactly as ours. Plain text is the same: matched by
    default, text with `split_special_tokens=True`."""
    trained = load_run(trained_run)
    export_hf(trained.model, trained.tokenizer, trained.tokenizer_path, tmp_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True, trust_remote_code=True)
    messages = [
        {"role": "system", "content": "<|endoftext|>"},
        {"role": "user", "content": "say <|user|>, <|end|><|assistant|> and <|system|>x"},
    ]
    ours = chat_ids(trained.tokenizer, messages, True)[0]
    sanitized = tokenizer.apply_chat_template(messages, add_generation_prompt=True, sanitize_control_tokens=True)
    assert sanitized["input_ids"] == ours
    matched = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    special = [trained.tokenizer.token_to_id(token) for token in (END_OF_TEXT, "<|user|>", "<|system|>")]
    assert [matched.count(token) for token in special] == [2, 2, 2] and matched != ours
    text = messages[1]["content"]
    assert tokenizer(text, split_special_tokens=True)["input_ids"] == text_ids(trained.tokenizer, [text])[0]
    assert special[1] in tokenizer(text)["input_ids"]


def test_a_tokenizer_without_the_chat_tokens_exports_no_chat_template(tmp_path):
    """A run trained before the chat tokens were reserved: no template, `<|endoftext|>` ends generation, and
    text that spells it stays text, as before."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    old = Tokenizer(models.BPE())
    old.pre_tokenizer, old.decoder = byte_level_pre_tokenizer(), decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[END_OF_TEXT], initial_alphabet=alphabet)
    old.train_from_iterator([topics[name] for name in sorted(topics)][:50], trainer=trainer)
    old.save(str(tmp_path / "tokenizer.json"))
    export_hf(tiny_model(old.get_vocab_size()), old, tmp_path / "tokenizer.json", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert "chat_template" not in config and config["split_special_tokens"] is True
    assert config["eos_token"] == END_OF_TEXT
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == 0


def test_the_remote_export_refuses_a_long_input_and_generates_past_the_context_in_a_sliding_window(
    trained_run, tmp_path
):
    trained = load_run(trained_run)
    vocab, end_of_text = trained.config.vocab_size, end_of_text_id(trained.tokenizer)
    model = tiny_model(vocab, **MODERN)
    export_hf(model, trained.tokenizer, trained.tokenizer_path, tmp_path)
    hf = load_hf(tmp_path, remote=True)
    with pytest.raises(ValueError, match="longer than block_size 32"):
        hf(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="pad on the right"):
        hf(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    # 20 + 30 tokens, past the 32 of the context: each step sees the last 32 tokens, as our uncached
    # path does with rotary positions.
    prompt = torch.randint(0, vocab, (20,), generator=torch.Generator().manual_seed(3)).tolist()
    assert hf_greedy(hf, prompt, 30, end_of_text) == our_greedy(model, prompt, 30, end_of_text, use_cache=False)


def test_only_layouts_a_transformers_architecture_computes_exactly_are_written_as_it():
    def architecture(**layout):
        return hf_architecture(GPTConfig(vocab_size=500, block_size=32, n_layer=2, n_head=2, n_embd=64, **layout))

    assert architecture(zero_init=True, dropout=0.1) == "gpt2"  # neither changes what the model computes
    assert architecture(**LLAMA, zero_init=True) == "llama"
    assert architecture(**LLAMA, qk_norm=True, bias=True) == "remote"  # Qwen3's MLP has no biases
    for extra in (
        {"logit_softcap": 30.0},
        {"value_embeddings": True},
        {"residual_scalars": True},
        {"embed_norm": True},
    ):
        assert architecture(**extra) == "remote", extra
        assert architecture(**{**LLAMA, **extra}) == "remote", extra
    for part in ({"activation": "swiglu"}, {"norm": "rmsnorm"}, {"position": "rope"}, {"qk_norm": True}):
        assert architecture(**part) == "remote", part  # GPT-2's layout with a part of Llama's
    for part in ({"activation": "relu2"}, {"norm": "layernorm"}, {"position": "learned"}):
        assert architecture(**{**LLAMA, **part}) == "remote", part  # Llama's layout with a part of GPT-2's


def test_the_safetensors_export_rebuilds_the_same_model(trained_run, tmp_path):
    trained = load_run(trained_run)
    export_safetensors(trained.model, trained.tokenizer_path, tmp_path)
    model = GPT(GPTConfig(**json.loads((tmp_path / "config.json").read_text())))
    load_model(model, str(tmp_path / "model.safetensors"))
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert (model.lm_head.weight is model.wte.weight) == trained.config.tie_embeddings
    assert (tmp_path / "tokenizer.json").read_text() == (trained_run / "tokenizer.json").read_text()


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
